// A connector built for `flowhost:connector@0.9.0`, a WIT version the host does not know (tests/build.rs makes
// that WIT from wit/v0.1.0): the host must refuse it at load, naming both versions.

import { capability, exportConnector, fetch } from "@flowhost/connector-sdk";

export const { describe, check, invoke } = exportConnector({
  describe: () => ({
    id: "future-wit",
    version: "0.1.0",
    displayName: "Test connector future-wit",
    description: "Built for a WIT version from the future.",
    connectionProperties: [],
    allowedHosts: [],
    capabilities: [capability({ id: "run", title: "Run", description: "Fetches.", inputSchema: { type: "object" } })],
  }),
  check() {},
  invoke() {
    return { status: fetch({ url: "https://example.com" }).status };
  },
});
