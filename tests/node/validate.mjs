// Validates an AsyncAPI document with the AsyncAPI project's own parser and prints what it found as one
// JSON object: {"valid": bool, "version": str, "channels", "operations", "messages" (ids),
// "diagnostics": [{severity, code, message, path}], "document": the document with every $ref resolved}.
// Exit code 0 when the document parses without errors, 1 otherwise, 2 on bad usage.
import { readFile } from "node:fs/promises";
import { Parser, DiagnosticSeverity } from "@asyncapi/parser";

const path = process.argv[2];
if (!path) {
  console.error("usage: node validate.mjs FILE");
  process.exit(2);
}
const parser = new Parser();
const { document, diagnostics } = await parser.parse(await readFile(path, "utf8"), { source: path });
const severities = { [DiagnosticSeverity.Error]: "error", [DiagnosticSeverity.Warning]: "warning",
  [DiagnosticSeverity.Information]: "information", [DiagnosticSeverity.Hint]: "hint" };
const out = {
  valid: document !== undefined && !diagnostics.some((d) => d.severity === DiagnosticSeverity.Error),
  version: document ? document.version() : null,
  channels: document ? document.channels().all().map((c) => c.id()) : [],
  operations: document ? document.operations().all().map((o) => o.id()) : [],
  messages: document ? document.components().messages().all().map((m) => m.id()) : [],
  diagnostics: diagnostics.map((d) => ({
    severity: severities[d.severity] ?? String(d.severity),
    code: String(d.code),
    message: d.message,
    path: d.path.join("."),
  })),
  document: document ? document.json() : null,
};
console.log(JSON.stringify(out));
process.exitCode = out.valid ? 0 : 1; // not process.exit(): it would cut a long stdout short
