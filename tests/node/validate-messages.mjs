// Checks messages against the schemas of an AsyncAPI document, as the AsyncAPI parser resolves them.
// Input (stdin): a JSON array of {"message": <component message id>, "part": "payload" | "headers", "value": ...}.
// Output (stdout): a JSON array, one {"valid": bool, "errors": [{path, message}]} per input, in order.
// Exit code 0 when the document parsed (whatever the messages), 1 when it did not, 2 on bad usage.
import { readFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { Parser } from "@asyncapi/parser";
import Ajv from "ajv";
import addFormats from "ajv-formats";

const path = process.argv[2];
if (!path) {
  console.error("usage: node validate-messages.mjs ASYNCAPI_FILE < messages.json");
  process.exit(2);
}
const { document, diagnostics } = await new Parser().parse(await readFile(path, "utf8"), { source: path });
if (document === undefined) {
  console.error(JSON.stringify(diagnostics.filter((d) => d.severity === 0)));
  process.exit(1);
}
const inputs = JSON.parse(readFileSync(0, "utf8"));
// strict: false lets the AsyncAPI extensions (x-amqp, x-parser-*) through; formats are checked (binary: any).
const ajv = new Ajv({ strict: false, allErrors: true });
addFormats(ajv);
const validators = new Map();
const results = inputs.map(({ message, part, value }) => {
  const key = `${message}/${part}`;
  if (!validators.has(key)) {
    const found = document.components().messages().get(message);
    if (!found) throw new Error(`no message ${message} in ${path}`);
    const schema = part === "headers" ? found.headers() : found.payload();
    if (!schema) throw new Error(`message ${message} has no ${part} schema`);
    validators.set(key, ajv.compile(schema.json()));
  }
  const validate = validators.get(key);
  const valid = validate(value);
  return {
    valid,
    errors: valid ? [] : validate.errors.map((e) => ({ path: e.instancePath, message: e.message, params: e.params })),
  };
});
console.log(JSON.stringify(results));
