// Stands in for the host's `repeater:plugin/log@0.1.1` import when the
// plugin runs under Node: keeps every line so tests can look at them.
export const lines = [];

export function log(level, message) {
  lines.push({ level, message });
}
