#!/usr/bin/env node
// Builds a TypeScript connector into a WebAssembly component:
//   1. the WIT types of flowhost:connector@0.1.0 generated with jco (guest types) into the work directory;
//   2. the connector type-checked against them with tsc (strict; no DOM, no Node types: only what runs);
//   3. bundled into one ES module with esbuild (the SDK included, the WIT imports left as imports);
//   4. componentized with componentize-qjs (QuickJS, snapshotted with Wizer), every WASI import stubbed, for
//      the world its exports ask for: `invokeBatch` makes it a batch connector, `inbound` adds the inbound side.
//
// node build.mjs --entry src/index.ts --out dist/x.wasm [--work DIR] [--node-modules DIR] [--wit DIR]
//
// Packages come from --node-modules (default: ./node_modules), installed with `npm ci` from the SDK's lockfile.

import { spawnSync } from "node:child_process";
import fs from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const sdkDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

function parseArgs(argv) {
  const args = { nodeModules: "node_modules", wit: path.join(sdkDir, "wit") };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, "").replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (argv[i + 1] === undefined) throw new Error(`${argv[i]} needs a value`);
    args[key] = argv[i + 1];
  }
  for (const required of ["entry", "out"]) {
    if (!args[required]) throw new Error(`--${required} is required`);
  }
  args.entry = path.resolve(args.entry);
  args.out = path.resolve(args.out);
  args.work = path.resolve(args.work ?? path.join(path.dirname(args.out), ".build-" + path.basename(args.out, ".wasm")));
  args.nodeModules = path.resolve(args.nodeModules);
  args.wit = path.resolve(args.wit);
  return args;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  if (!fs.existsSync(path.join(args.nodeModules, "componentize-qjs"))) {
    throw new Error(`no packages in ${args.nodeModules}: run \`npm ci\` first`);
  }
  const require = createRequire(path.join(args.nodeModules, "noop.js"));
  const load = (name) => import(pathToFileURL(require.resolve(name)).href);
  fs.mkdirSync(args.work, { recursive: true });
  fs.mkdirSync(path.dirname(args.out), { recursive: true });

  // 1. Types from the WIT, for the widest world (it has every interface).
  const { _setPreopens } = await load("@bytecodealliance/preview2-shim/filesystem");
  const { generateGuestTypes } = await load("@bytecodealliance/jco-transpile");
  _setPreopens({ "/": "/" });
  const typesDir = path.join(args.work, "types");
  fs.rmSync(typesDir, { recursive: true, force: true });
  const files = await generateGuestTypes(args.wit, { worldName: "flowhost:typescript-sdk/batch-connector-with-inbound" });
  for (const [name, content] of Object.entries(files)) {
    const file = path.join(typesDir, name);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    // componentize-qjs passes u64 and s64 as numbers (exact up to 2^53), where jco's own bindings use bigint.
    fs.writeFileSync(file, Buffer.from(content).toString("utf8").replace(/\bbigint\b/g, "number"));
  }

  // 2. Type check.
  const tsconfig = {
    compilerOptions: {
      strict: true,
      noEmit: true,
      target: "ES2022",
      module: "ES2022",
      moduleResolution: "bundler",
      lib: ["ES2022"],
      types: [],
      skipLibCheck: true,
      paths: { "@flowhost/connector-sdk": [path.join(sdkDir, "src/index.ts")] },
    },
    files: [args.entry, ...listFiles(typesDir).filter((f) => f.endsWith(".d.ts"))],
  };
  const tsconfigPath = path.join(args.work, "tsconfig.json");
  fs.writeFileSync(tsconfigPath, JSON.stringify(tsconfig, null, 2));
  const tsc = spawnSync(process.execPath, [path.join(args.nodeModules, "typescript/bin/tsc"), "-p", tsconfigPath, "--pretty", "false"], {
    encoding: "utf8",
  });
  if (tsc.status !== 0) {
    throw new Error(`type errors in ${path.relative(process.cwd(), args.entry)}:\n${tsc.stdout}${tsc.stderr}`);
  }

  // 3. Bundle.
  const esbuild = await load("esbuild");
  const bundle = await esbuild.build({
    entryPoints: [args.entry],
    bundle: true,
    format: "esm",
    platform: "neutral",
    target: "es2022",
    write: false,
    metafile: true,
    external: ["flowhost:*"],
    alias: { "@flowhost/connector-sdk": path.join(sdkDir, "src/index.ts") },
    logLevel: "silent",
  });
  const source = bundle.outputFiles[0].text;
  const exported = Object.values(bundle.metafile.outputs)[0].exports;
  for (const name of ["describe", "check", "invoke"]) {
    if (!exported.includes(name)) throw new Error(`${args.entry} does not export ${name} (exportConnector's result)`);
  }
  const batch = exported.includes("invokeBatch");
  const inbound = exported.includes("inbound");
  const world = `flowhost:typescript-sdk/${batch ? "batch-connector" : "connector"}${inbound ? "-with-inbound" : ""}`;
  const bundlePath = path.join(args.work, "bundle.js");
  fs.writeFileSync(bundlePath, source);

  // 4. Componentize.
  const { componentize } = require("componentize-qjs");
  const { component } = await componentize({
    witPath: args.wit,
    jsSource: source,
    jsPath: bundlePath,
    world,
    stubWasi: true,
    sync: true,
  });
  fs.writeFileSync(args.out, component);
  console.log(`built ${path.relative(process.cwd(), args.out)} (${world}, ${(component.length / 1024).toFixed(0)} KiB)`);
}

function listFiles(dir) {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    return entry.isDirectory() ? listFiles(full) : [full];
  });
}

main().catch((error) => {
  console.error(`error: ${error.message ?? error}`);
  process.exit(1);
});
