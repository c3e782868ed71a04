// Turns src/plugin.js into a WebAssembly component with componentize-js,
// through its Node API: `node build.mjs [out.wasm]` (default plugin.wasm).
import { writeFile } from "node:fs/promises";
import { componentize } from "@bytecodealliance/componentize-js";

const out = process.argv[2] ?? "plugin.wasm";
const { component } = await componentize({
  sourcePath: "src/plugin.js",
  witPath: "wit/v0.1",
  worldName: "repeater",
  // A plugin has no network: leave out fetch() and its event handler, which
  // would import wasi:http, which the host does not provide.
  disableFeatures: ["http", "fetch-event"],
});
await writeFile(out, component);
console.log(`built ${out} (${component.byteLength} bytes)`);
