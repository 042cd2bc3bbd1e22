// A connector built for `flowhost:connector@0.9.0`, a WIT version the host does not know (tests/build.rs makes
// that WIT from wit/v0.1.0): the host must refuse it at load, naming both versions. It uses no SDK (the SDK is
// written for 0.1.0), only the generated types.

import * as http from "flowhost:connector/http@0.9.0";
import type { ConnectorInfo, InvocationContext } from "flowhost:connector/types@0.9.0";

export function describe(): ConnectorInfo {
  return {
    id: "future-wit",
    version: "0.1.0",
    displayName: "Test connector future-wit",
    description: "Built for a WIT version from the future.",
    connectionProperties: [],
    allowedHosts: [],
    capabilities: [{ id: "run", title: "Run", description: "Fetches.", inputSchema: "{}", outputSchema: "{}" }],
  };
}

export function check(_connection: string): void {}

export function invoke(_capability: string, _connection: string, _input: string, _context: InvocationContext): string {
  return JSON.stringify({ status: http.fetch({ method: "GET", url: "https://example.com", headers: [] }).status });
}
