// The generic HTTP connector: one `request` capability that calls any path below the connection's base URL,
// with the connection's authentication (none, bearer, basic, or an API key in a header). Written in
// TypeScript with flowhost's SDK (connectors/sdk-typescript) and built into flowhost as the `http` connector.

import {
  type FetchResponse,
  type Json,
  type JsonObject,
  base64Encode,
  capability,
  configString,
  exportBatchConnector,
  fetch,
  invalidConfig,
  invalidFields,
  isObject,
  log,
  pointer,
  property,
  statusFailure,
  type FieldError,
  ConnectorFailure,
} from "@flowhost/connector-sdk";

const METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"];
const AUTH_TYPES = ["none", "bearer", "basic", "apiKey"];
/** Headers the connector sets itself, which an input may not. */
const RESERVED_HEADERS = ["host", "content-length", "transfer-encoding", "connection"];

const INPUT_SCHEMA = {
  type: "object",
  additionalProperties: false,
  required: ["path"],
  properties: {
    method: { type: "string", enum: METHODS, default: "GET", description: "The HTTP method." },
    path: {
      type: "string",
      pattern: "^/",
      description: "The path below the connection's base URL, starting with `/`, e.g. `/customers/42`.",
    },
    query: {
      type: "object",
      description: "Query parameters; an array value repeats the parameter.",
      additionalProperties: {
        anyOf: [
          { type: ["string", "number", "boolean"] },
          { type: "array", items: { type: ["string", "number", "boolean"] } },
        ],
      },
    },
    headers: {
      type: "object",
      description: "Request headers (the connection's authentication is added; Host and Content-Length are not allowed).",
      additionalProperties: { type: "string" },
    },
    json: { description: "A JSON body, sent with `content-type: application/json`." },
    text: { type: "string", description: "A text body, sent as UTF-8 (`content-type: text/plain` unless given)." },
    expectedStatuses: {
      type: "array",
      items: { type: "integer", minimum: 100, maximum: 599 },
      minItems: 1,
      description: "The statuses that are a success; default: any 2xx. Any other fails the call by its kind.",
    },
    timeoutMs: { type: "integer", minimum: 1, description: "A timeout for this request, in milliseconds." },
  },
  example: { method: "POST", path: "/customers", query: { notify: true }, json: { name: "Ada" }, expectedStatuses: [200, 201] },
};

const OUTPUT_SCHEMA = {
  type: "object",
  required: ["status", "headers", "body"],
  properties: {
    status: { type: "integer" },
    headers: { type: "object", additionalProperties: { type: "string" } },
    body: { description: "The response body: parsed JSON when the response is JSON, else text." },
  },
};

interface Connection {
  baseUrl: string;
  headers: [string, string][];
}

/** The connection: its base URL and the headers its authentication adds. */
function connectionOf(config: JsonObject): Connection {
  const baseUrl = configString(config, "baseUrl");
  const match = /^(https?):\/\/([^/?#]+)(\/[^?#]*)?$/i.exec(baseUrl);
  if (!match) throw invalidConfig("baseUrl must be an http or https URL without a query or fragment, e.g. https://api.example.com/v1");
  const authType = config.authType ?? "none";
  if (typeof authType !== "string" || !AUTH_TYPES.includes(authType)) {
    throw invalidConfig(`authType must be one of ${AUTH_TYPES.join(", ")}`);
  }
  const headers: [string, string][] = [];
  if (authType === "bearer") {
    headers.push(["authorization", `Bearer ${configString(config, "token")}`]);
  } else if (authType === "basic") {
    const user = configString(config, "username");
    const password = typeof config.password === "string" ? config.password : "";
    headers.push(["authorization", `Basic ${base64Encode(`${user}:${password}`)}`]);
  } else if (authType === "apiKey") {
    const name = typeof config.apiKeyHeader === "string" && config.apiKeyHeader ? config.apiKeyHeader : "x-api-key";
    if (!/^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/.test(name)) throw invalidConfig("apiKeyHeader is not a valid header name");
    headers.push([name.toLowerCase(), configString(config, "apiKey")]);
  }
  return { baseUrl: baseUrl.replace(/\/+$/, ""), headers };
}

/** Percent-encodes a query component (encodeURIComponent leaves a few characters a server may mind). */
function encode(value: string): string {
  return encodeURIComponent(value).replace(/[!'()*]/g, (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase());
}

interface Prepared {
  method: string;
  url: string;
  headers: [string, string][];
  body?: string;
  json?: unknown;
  expected?: number[];
  timeoutMs?: number;
}

/** Checks an input as the schema does (the host validated it, but a connector answers for itself) and
 * prepares the request: every problem is named by its JSON pointer. */
function prepare(connection: Connection, input: JsonObject): Prepared {
  const errors: FieldError[] = [];
  const fail = (at: string, message: string) => errors.push({ pointer: at, message });
  for (const key of Object.keys(input)) {
    if (!(key in INPUT_SCHEMA.properties)) fail(pointer(key), `unknown property ${key}`);
  }
  const method = input.method ?? "GET";
  if (typeof method !== "string" || !METHODS.includes(method)) fail("/method", `method must be one of ${METHODS.join(", ")}`);
  const path = input.path;
  if (typeof path !== "string") {
    fail("/path", path === undefined ? "path is required" : "path must be a string");
  } else if (!path.startsWith("/") || path.startsWith("//")) {
    fail("/path", "path must start with a single / (it is below the connection's base URL)");
  } else if (/[?#]/.test(path)) {
    fail("/path", "path must not carry a query or fragment: give query parameters in query");
  } else if (path.split("/").some((segment) => segment === ".." || segment === "." || /^%2e(%2e)?$/i.test(segment))) {
    fail("/path", "path must not contain . or .. segments: it stays below the base URL");
  }
  const query: string[] = [];
  if (input.query !== undefined) {
    if (!isObject(input.query)) {
      fail("/query", "query must be an object");
    } else {
      for (const [name, value] of Object.entries(input.query)) {
        const values = Array.isArray(value) ? value : [value];
        values.forEach((v, i) => {
          if (typeof v === "string" || typeof v === "number" || typeof v === "boolean") {
            query.push(`${encode(name)}=${encode(String(v))}`);
          } else {
            fail(Array.isArray(value) ? pointer("query", name, i) : pointer("query", name), "a query value must be a string, number or boolean");
          }
        });
      }
    }
  }
  const headers: [string, string][] = [];
  if (input.headers !== undefined) {
    if (!isObject(input.headers)) {
      fail("/headers", "headers must be an object");
    } else {
      for (const [name, value] of Object.entries(input.headers)) {
        const lower = name.toLowerCase();
        if (typeof value !== "string") fail(pointer("headers", name), "a header value must be a string");
        else if (!/^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/.test(name)) fail(pointer("headers", name), "not a valid header name");
        else if (RESERVED_HEADERS.includes(lower)) fail(pointer("headers", name), `${name} is set by the connector`);
        else if (connection.headers.some(([auth]) => auth === lower)) {
          fail(pointer("headers", name), `${name} is set by the connection's authentication`);
        } else headers.push([lower, value]);
      }
    }
  }
  if (input.json !== undefined && input.text !== undefined) fail("/text", "give either json or text, not both");
  if (input.text !== undefined && typeof input.text !== "string") fail("/text", "text must be a string");
  let expected: number[] | undefined;
  if (input.expectedStatuses !== undefined) {
    const statuses = input.expectedStatuses;
    if (!Array.isArray(statuses) || statuses.length === 0) {
      fail("/expectedStatuses", "expectedStatuses must be a non-empty array of statuses");
    } else {
      statuses.forEach((s, i) => {
        if (typeof s !== "number" || !Number.isInteger(s) || s < 100 || s > 599) {
          fail(pointer("expectedStatuses", i), "a status is an integer from 100 to 599");
        }
      });
      expected = statuses as number[];
    }
  }
  const timeoutMs = input.timeoutMs;
  if (timeoutMs !== undefined && (typeof timeoutMs !== "number" || !Number.isInteger(timeoutMs) || timeoutMs < 1)) {
    fail("/timeoutMs", "timeoutMs must be a positive integer");
  }
  if (errors.length > 0) throw invalidFields(errors);

  if (typeof input.text === "string" && !headers.some(([k]) => k === "content-type")) {
    headers.push(["content-type", "text/plain; charset=utf-8"]);
  }
  const url = connection.baseUrl + (path as string) + (query.length ? "?" + query.join("&") : "");
  return {
    method: method as string,
    url,
    headers: [...connection.headers, ...headers],
    body: input.text as string | undefined,
    json: input.json,
    expected,
    timeoutMs: timeoutMs as number | undefined,
  };
}

/** The response as the capability returns it. */
function output(response: FetchResponse): Json {
  const headers: JsonObject = {};
  for (const [name, value] of response.headers) {
    const key = name.toLowerCase();
    headers[key] = key in headers ? `${headers[key]}, ${value}` : value;
  }
  const text = response.text();
  let body: Json = text;
  if (/^application\/([a-z0-9.+-]*\+)?json\b/i.test(response.header("content-type") ?? "") && text.trim() !== "") {
    try {
      body = JSON.parse(text);
    } catch {
      // A body that says it is JSON and is not stays text.
    }
  }
  return { status: response.status, headers, body };
}

function request(connection: Connection, input: JsonObject): Json {
  const prepared = prepare(connection, input);
  const response = fetch(prepared);
  const expected = prepared.expected ? prepared.expected.includes(response.status) : response.ok;
  if (!expected) {
    throw statusFailure(response, `${prepared.method} ${input.path}`);
  }
  log.debug(`${prepared.method} ${input.path}: HTTP ${response.status}`);
  return output(response);
}

export const { describe, check, invoke, batchedCapabilities, invokeBatch } = exportBatchConnector({
  describe: () => ({
    id: "http",
    version: "0.1.0",
    displayName: "HTTP",
    description: "Calls any HTTP API below a base URL, with bearer, basic or API key authentication.",
    connectionProperties: [
      property({
        name: "baseUrl",
        title: "Base URL",
        description: "The API's base URL; requests go to paths below it, and only to its host.",
        required: true,
        schema: { type: "string", pattern: "^https?://", example: "https://api.example.com/v1" },
      }),
      property({
        name: "authType",
        title: "Authentication",
        description: "none, bearer (token), basic (username and password) or apiKey (apiKey in apiKeyHeader).",
        schema: { type: "string", enum: AUTH_TYPES, default: "none" },
      }),
      property({ name: "token", title: "Bearer token", description: "The token of bearer authentication.", secret: true }),
      property({ name: "username", title: "Username", description: "The user of basic authentication." }),
      property({ name: "password", title: "Password", description: "The password of basic authentication.", secret: true }),
      property({
        name: "apiKeyHeader",
        title: "API key header",
        description: "The header that carries the API key (default: X-API-Key).",
        schema: { type: "string", example: "X-API-Key" },
      }),
      property({ name: "apiKey", title: "API key", description: "The API key of apiKey authentication.", secret: true }),
      property({
        name: "checkPath",
        title: "Check path",
        description: "A path below the base URL that `check` gets to verify the credentials (401 or 403 there is unauthorized).",
        schema: { type: "string", pattern: "^/", example: "/me" },
      }),
    ],
    allowedHosts: ["{baseUrl}"],
    capabilities: [
      capability({
        id: "request",
        title: "Send an HTTP request",
        description:
          "Sends a request to a path below the base URL and returns the status, headers and body. A status outside expectedStatuses fails: 401/403 unauthorized, 404 not-found, 429 rate-limited, 5xx transient (both retried), others permanent.",
        inputSchema: INPUT_SCHEMA,
        outputSchema: OUTPUT_SCHEMA,
      }),
    ],
  }),

  check(config) {
    const connection = connectionOf(config);
    const checkPath = config.checkPath;
    if (checkPath === undefined) return;
    if (typeof checkPath !== "string" || !checkPath.startsWith("/")) throw invalidConfig("checkPath must start with /");
    request(connection, { path: checkPath });
  },

  invoke(capabilityId, config, input) {
    if (capabilityId !== "request") throw invalidFields([{ pointer: "", message: `unknown capability ${capabilityId}` }]);
    return request(connectionOf(config), input);
  },

  // A batch runs its requests one after the other in one instance: each still succeeds or fails alone.
  batchedCapabilities: () => ["request"],
  invokeBatch(capabilityId, config, items) {
    let connection: Connection;
    try {
      if (capabilityId !== "request") throw invalidFields([{ pointer: "", message: `unknown capability ${capabilityId}` }]);
      connection = connectionOf(config);
    } catch (e) {
      return items.map(() => e as ConnectorFailure);
    }
    return items.map(({ input }) => {
      try {
        return request(connection, input);
      } catch (e) {
        if (e instanceof ConnectorFailure) return e;
        throw e;
      }
    });
  },
});
