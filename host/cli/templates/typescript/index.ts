// The {{name}} connector, in TypeScript. `npm run build` makes dist/{{name}}.wasm; `flowhost connector test
// dist/{{name}}.wasm` runs the acceptance suite over it.

import {
  capability,
  exportConnector,
  invalidConfig,
  invalidInput,
  log,
  optionalString,
  property,
  requireString,
} from "@flowhost/connector-sdk";

export const { describe, check, invoke } = exportConnector({
  describe: () => ({
    id: "{{name}}",
    version: "0.1.0",
    displayName: "{{title}}",
    description: "Greets whoever it is asked to.",
    connectionProperties: [
      property({
        name: "greeting",
        title: "Greeting",
        description: "The word to greet with.",
        schema: { type: "string", example: "Hello" },
      }),
    ],
    // The hosts it may call, e.g. "api.example.com", or "{baseUrl}" for the origin of a connection property.
    allowedHosts: [],
    capabilities: [
      capability({
        id: "greet",
        title: "Greet someone",
        description: "Returns a greeting for a name.",
        inputSchema: {
          type: "object",
          required: ["name"],
          properties: { name: { type: "string", minLength: 1 } },
          additionalProperties: false,
          example: { name: "Ada" },
        },
        outputSchema: { type: "object", required: ["message"], properties: { message: { type: "string" } } },
      }),
    ],
  }),

  check(connection) {
    if (connection.greeting !== undefined && typeof connection.greeting !== "string") {
      throw invalidConfig("greeting must be a string");
    }
  },

  invoke(capabilityId, connection, input) {
    if (capabilityId !== "greet") throw invalidInput("", `unknown capability ${capabilityId}`);
    const greeting = optionalString(connection, "greeting") ?? "Hello";
    const name = requireString(input, "name");
    if (name === "") throw invalidInput("/name", "name must not be empty");
    log.info(`greeting ${name}`);
    return { message: `${greeting}, ${name}!` };
  },
});
