// A module resolve hook for Node: the plugin's WIT import
// `repeater:plugin/log@0.1.1` resolves to ./log.mjs, so the plugin's
// own code runs natively, unchanged.
const STUBS = {
  "repeater:plugin/log@0.1.1": new URL("./log.mjs", import.meta.url).href,
};

export async function resolve(specifier, context, nextResolve) {
  const stub = STUBS[specifier];
  if (stub !== undefined) {
    return { url: stub, shortCircuit: true };
  }
  return nextResolve(specifier, context);
}
