//! Runs the components built from `plugins/` in wasmtime, through the WIT
//! exports, to prove the SDK's glue speaks the `repeater:plugin@0.1.1`
//! contract: values cross the boundary intact, the `log` import is called,
//! and a plugin trap surfaces as an error of the call.
//!
//! The dynamic component API is used on purpose: this test checks the
//! guest side without depending on the daemon's own bindings.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use wasmtime::component::{Component, Instance, Linker, ResourceTable, Val};
use wasmtime::{Config, Engine, OptLevel, ResourceLimiter, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

const PLUGIN_INTERFACE: &str = "repeater:plugin/plugin@0.1.1";
const CLASSIFICATION_INTERFACE: &str = "repeater:plugin/classification@0.1.1";
const LOG_INTERFACE: &str = "repeater:plugin/log@0.1.1";

struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: MemoryCap,
}

/// Refuses linear-memory growth past `max` and remembers that it did.
struct MemoryCap {
    max: usize,
    denied: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max {
            self.denied = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

/// The memory cap the hostile memory-bomb test runs under.
const MEMORY_CAP: usize = 64 * 1024 * 1024;

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A plugin instance plus the log lines it sent.
struct Loaded {
    store: Store<State>,
    instance: Instance,
    logs: Arc<Mutex<Vec<(String, String)>>>,
}

/// One engine and one compiled component per plugin for the whole file:
/// compiling dominates these tests' run time in debug builds.
fn compiled(name: &str, bytes: &[u8]) -> (Engine, Component) {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    static COMPONENTS: OnceLock<Mutex<HashMap<String, Component>>> = OnceLock::new();
    let engine = ENGINE.get_or_init(|| {
        let mut config = Config::new();
        config.cranelift_opt_level(OptLevel::None);
        config.epoch_interruption(true);
        Engine::new(&config).expect("the engine starts")
    });
    let mut components = COMPONENTS.get_or_init(Default::default).lock().unwrap();
    let component = components
        .entry(name.to_owned())
        .or_insert_with(|| Component::new(engine, bytes).expect("the plugin compiles"));
    (engine.clone(), component.clone())
}

fn load(name: &str, bytes: &[u8]) -> Loaded {
    let (engine, component) = compiled(name, bytes);
    let mut linker: Linker<State> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).expect("WASI links");
    let logs = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&logs);
    linker
        .instance(LOG_INTERFACE)
        .unwrap()
        .func_new("log", move |_, _, params, _| {
            let (Val::Enum(level), Val::String(message)) = (&params[0], &params[1]) else {
                panic!("log called with {params:?}");
            };
            sink.lock().unwrap().push((level.clone(), message.clone()));
            Ok(())
        })
        .unwrap();
    let state = State {
        wasi: WasiCtx::builder().build(),
        table: ResourceTable::new(),
        limits: MemoryCap {
            max: MEMORY_CAP,
            denied: false,
        },
    };
    let mut store = Store::new(&engine, state);
    store.limiter(|state| &mut state.limits);
    // Far enough that only the loop test, which lowers it, ever reaches it.
    store.set_epoch_deadline(1_000_000);
    let instance = linker
        .instantiate(&mut store, &component)
        .expect("the plugin instantiates");
    Loaded {
        store,
        instance,
        logs,
    }
}

impl Loaded {
    fn call(&mut self, function: &str, params: &[Val]) -> wasmtime::Result<Val> {
        self.call_in(PLUGIN_INTERFACE, function, params)
    }

    fn call_in(
        &mut self,
        interface: &str,
        function: &str,
        params: &[Val],
    ) -> wasmtime::Result<Val> {
        let interface = self
            .instance
            .get_export_index(&mut self.store, None, interface)
            .unwrap_or_else(|| panic!("{interface} is exported"));
        let index = self
            .instance
            .get_export_index(&mut self.store, Some(&interface), function)
            .unwrap_or_else(|| panic!("{function} is exported"));
        let func = self
            .instance
            .get_func(&mut self.store, index)
            .expect("the export is a function");
        let mut results = [Val::Bool(false)];
        func.call(&mut self.store, params, &mut results)?;
        Ok(results[0].clone())
    }
}

fn builtin(name: &str) -> &'static [u8] {
    repeaterd::plugin::BUILTIN_PLUGINS
        .iter()
        .find(|(plugin, _)| *plugin == name)
        .unwrap_or_else(|| panic!("{name} is built in"))
        .1
}

fn string(text: &str) -> Val {
    Val::String(text.to_owned())
}

fn bytes(data: &[u8]) -> Val {
    Val::List(data.iter().map(|byte| Val::U8(*byte)).collect())
}

fn event(content_type: &str, payload: &[u8]) -> Val {
    Val::Record(vec![
        ("id".into(), string("evt-1")),
        ("domain".into(), string("acme")),
        ("repeater".into(), string("crm")),
        ("event-type".into(), string("patient.updated")),
        ("content-type".into(), string(content_type)),
        ("payload".into(), bytes(payload)),
        ("attempt".into(), Val::U32(2)),
        ("registered-at".into(), Val::S64(1_700_000_000_123)),
        (
            "ordering-key".into(),
            Val::Option(Some(Box::new(string("k-1")))),
        ),
        ("record-id".into(), string("rec-1")),
    ])
}

fn field<'a>(record: &'a Val, name: &str) -> &'a Val {
    let Val::Record(fields) = record else {
        panic!("expected a record, got {record:?}");
    };
    &fields
        .iter()
        .find(|(field, _)| field == name)
        .unwrap_or_else(|| panic!("no field {name} in {record:?}"))
        .1
}

fn as_bytes(list: &Val) -> Vec<u8> {
    let Val::List(items) = list else {
        panic!("expected a list, got {list:?}");
    };
    items
        .iter()
        .map(|item| match item {
            Val::U8(byte) => *byte,
            other => panic!("expected u8, got {other:?}"),
        })
        .collect()
}

fn header<'a>(request: &'a Val, name: &str) -> Option<&'a str> {
    let Val::List(headers) = field(request, "headers") else {
        panic!("headers is not a list");
    };
    headers.iter().find_map(
        |header| match (field(header, "name"), field(header, "value")) {
            (Val::String(key), Val::String(value)) if key.eq_ignore_ascii_case(name) => {
                Some(value.as_str())
            }
            _ => None,
        },
    )
}

/// The request of a `send` outcome.
fn sent(outcome: Val) -> Val {
    match outcome {
        Val::Variant(case, Some(request)) if case == "send" => *request,
        other => panic!("expected send, got {other:?}"),
    }
}

#[test]
fn json_forward_builds_an_envelope_through_the_component() {
    let mut plugin = load("json-forward", builtin("json-forward"));
    let config = string(r#"{"envelope": true, "method": "PUT"}"#);
    let valid = plugin
        .call("validate-config", std::slice::from_ref(&config))
        .unwrap();
    assert_eq!(valid, Val::Result(Ok(None)));

    let outcome = plugin
        .call(
            "build",
            &[event("application/json", br#"{"a":[1,2]}"#), config],
        )
        .unwrap();
    let request = sent(outcome);
    assert_eq!(field(&request, "method"), &Val::Enum("put".into()));
    assert_eq!(header(&request, "idempotency-key"), Some("rec-1"));
    let body: serde_json::Value =
        serde_json::from_slice(&as_bytes(field(&request, "body"))).unwrap();
    assert_eq!(body["data"], serde_json::json!({"a": [1, 2]}));
    assert_eq!(body["attempt"], 2);
    assert_eq!(body["ordering_key"], "k-1");
    assert_eq!(body["registered_at"], "2023-11-14T22:13:20.123Z");
}

#[test]
fn json_forward_rejects_a_bad_config_and_a_bad_payload() {
    let mut plugin = load("json-forward", builtin("json-forward"));
    let Val::Result(Err(Some(reason))) = plugin
        .call("validate-config", &[string(r#"{"method": "TRACE"}"#)])
        .unwrap()
    else {
        panic!("a bad method must be refused");
    };
    assert!(matches!(*reason, Val::String(ref text) if text.contains("TRACE")));

    let outcome = plugin
        .call(
            "build",
            &[event("application/json", b"{oops"), string("{}")],
        )
        .unwrap();
    assert!(
        matches!(&outcome, Val::Variant(case, Some(_)) if case == "reject"),
        "{outcome:?}"
    );
}

#[test]
fn classify_honours_retry_after_through_the_component() {
    let mut plugin = load("json-forward", builtin("json-forward"));
    let summary = Val::Record(vec![
        ("method".into(), Val::Enum("post".into())),
        ("url".into(), string("http://127.0.0.1:9/hook")),
        ("headers".into(), Val::List(Vec::new())),
        ("body-size".into(), Val::U64(3)),
    ]);
    let reply = Val::Variant(
        "response".into(),
        Some(Box::new(Val::Record(vec![
            ("status".into(), Val::U16(429)),
            (
                "headers".into(),
                Val::List(vec![Val::Record(vec![
                    ("name".into(), string("Retry-After")),
                    ("value".into(), string("17")),
                ])]),
            ),
            ("body-excerpt".into(), bytes(b"slow down")),
        ]))),
    );
    let verdict = plugin
        .call("classify", &[summary, reply, string("{}")])
        .unwrap();
    let Val::Variant(case, Some(retry)) = verdict else {
        panic!("expected retry, got {verdict:?}");
    };
    assert_eq!(case, "retry");
    assert_eq!(
        field(&retry, "after-seconds"),
        &Val::Option(Some(Box::new(Val::U32(17))))
    );
    assert_eq!(field(&retry, "reason"), &string("HTTP 429: slow down"));
}

#[test]
fn plugins_declare_the_rules_their_replies_are_judged_by() {
    let rules = |name: &str| {
        load(name, builtin(name))
            .call_in(CLASSIFICATION_INTERFACE, "rules", &[])
            .expect("rules returns")
    };
    // Both leave classify at the SDK's default and say so.
    assert_eq!(rules("json-forward"), Val::Enum("default-rules".into()));
    assert_eq!(rules("form-xml"), Val::Enum("default-rules".into()));
    // fhir-r4 reads OperationOutcome bodies in a classify of its own.
    assert_eq!(rules("fhir-r4"), Val::Enum("own-rules".into()));
}

#[test]
fn fhir_r4_puts_a_patient_through_the_component() {
    let mut plugin = load("fhir-r4", builtin("fhir-r4"));
    let payload = br#"{"id": "p-9", "first_name": "Ada", "last_name": "Lovelace", "gender": "f"}"#;
    let request = sent(
        plugin
            .call("build", &[event("application/json", payload), string("{}")])
            .unwrap(),
    );
    assert_eq!(field(&request, "method"), &Val::Enum("put".into()));
    assert_eq!(
        field(&request, "path"),
        &Val::Option(Some(Box::new(string("Patient/p-9"))))
    );
    assert_eq!(
        header(&request, "content-type"),
        Some("application/fhir+json")
    );
    let patient: serde_json::Value =
        serde_json::from_slice(&as_bytes(field(&request, "body"))).unwrap();
    assert_eq!(patient["resourceType"], "Patient");
    assert_eq!(patient["gender"], "female");
}

#[test]
fn form_xml_forwards_xml_through_the_component() {
    let mut plugin = load("form-xml", builtin("form-xml"));
    let request = sent(
        plugin
            .call(
                "build",
                &[event("application/xml", b"<form/>"), string("{}")],
            )
            .unwrap(),
    );
    assert_eq!(as_bytes(field(&request, "body")), b"<form/>");
    assert_eq!(header(&request, "content-type"), Some("application/xml"));
}

#[test]
fn hostile_ok_mode_logs_through_the_import_and_trap_mode_traps() {
    let hostile = std::fs::read(crate::fixtures::HOSTILE_PLUGIN).unwrap();

    let mut plugin = load("hostile", &hostile);
    let request = sent(
        plugin
            .call(
                "build",
                &[event("text/plain", b"hi"), string(r#"{"mode": "ok"}"#)],
            )
            .unwrap(),
    );
    assert_eq!(as_bytes(field(&request, "body")), b"hi");
    let logs = plugin.logs.lock().unwrap().clone();
    assert_eq!(
        logs,
        vec![(
            "info".to_owned(),
            "hostile plugin in ok mode: forwarding evt-1".to_owned()
        )]
    );

    let mut plugin = load("hostile", &hostile);
    let trapped = plugin.call(
        "build",
        &[event("text/plain", b"hi"), string(r#"{"mode": "trap"}"#)],
    );
    assert!(trapped.is_err(), "trap mode returned {trapped:?}");
}

#[test]
fn hostile_memory_bomb_is_stopped_by_a_memory_cap() {
    let hostile = std::fs::read(crate::fixtures::HOSTILE_PLUGIN).unwrap();
    let mut plugin = load("hostile", &hostile);
    let config = string(r#"{"mode": "memory-bomb"}"#);
    let outcome = plugin.call("build", &[event("text/plain", b"hi"), config]);
    let err = outcome.expect_err("memory-bomb mode must not return");
    assert!(
        plugin.store.data().limits.denied,
        "the cap was never reached"
    );
    // The guest's allocator fails, and Rust aborts with `unreachable`.
    assert_eq!(
        err.downcast_ref::<wasmtime::Trap>(),
        Some(&wasmtime::Trap::UnreachableCodeReached),
        "{err:?}"
    );
}

#[test]
fn hostile_loop_spins_until_an_epoch_deadline_stops_it() {
    let hostile = std::fs::read(crate::fixtures::HOSTILE_PLUGIN).unwrap();
    let mut plugin = load("hostile", &hostile);
    plugin.store.set_epoch_deadline(1);
    let engine = plugin.store.engine().clone();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(10));
                engine.increment_epoch();
            }
        })
    };
    let config = string(r#"{"mode": "loop"}"#);
    let outcome = plugin.call("build", &[event("text/plain", b"hi"), config]);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    ticker.join().unwrap();
    let err = outcome.expect_err("loop mode must not return");
    assert_eq!(
        err.downcast_ref::<wasmtime::Trap>(),
        Some(&wasmtime::Trap::Interrupt),
        "{err:?}"
    );
}
