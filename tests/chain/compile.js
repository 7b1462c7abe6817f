// Compile InferencePayment.sol with solc-js (offline) and print {"abi": [...], "bytecode": "0x..."}.
// Used by tests/chain_fixtures.py at test set-up.
"use strict";
const fs = require("fs");
const path = require("path");
const solc = require("solc");

const source = fs.readFileSync(path.join(__dirname, "InferencePayment.sol"), "utf8");
const input = {
  language: "Solidity",
  sources: { "InferencePayment.sol": { content: source } },
  settings: {
    // Paris: no PUSH0, so the bytecode runs on any EVM the Plumise chain may be pinned to.
    evmVersion: "paris",
    optimizer: { enabled: true, runs: 200 },
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
  },
};
const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors || []).filter((e) => e.severity === "error");
if (errors.length > 0) {
  process.stderr.write(errors.map((e) => e.formattedMessage).join("\n"));
  process.exit(1);
}
const contract = output.contracts["InferencePayment.sol"].InferencePayment;
process.stdout.write(JSON.stringify({ abi: contract.abi, bytecode: "0x" + contract.evm.bytecode.object }));
