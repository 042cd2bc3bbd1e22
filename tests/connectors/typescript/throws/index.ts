// A TypeScript connector with a bug: `explode` throws a TypeError (not a connector error), which the host must
// report as `crashed` with the message and survive; `ok` answers, to show the host keeps serving.

import { capability, exportConnector, invalidInput } from "@flowhost/connector-sdk";

export const { describe, check, invoke } = exportConnector({
  describe: () => ({
    id: "throws",
    version: "0.1.0",
    displayName: "Test connector throws",
    description: "A connector used by flowhost's tests: one capability throws.",
    connectionProperties: [],
    allowedHosts: [],
    capabilities: [
      capability({ id: "explode", title: "Explode", description: "Throws a TypeError.", inputSchema: { type: "object" } }),
      capability({ id: "ok", title: "OK", description: "Answers {ok: true}.", inputSchema: { type: "object" } }),
    ],
  }),
  check() {},
  invoke(capabilityId, _connection, input) {
    if (capabilityId === "explode") {
      const profile = input.profile as unknown as { name: string };
      return profile.name; // input.profile is undefined: TypeError
    }
    if (capabilityId === "ok") return { ok: true };
    throw invalidInput("", `unknown capability ${capabilityId}`);
  },
});
