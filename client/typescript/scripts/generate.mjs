// Generates the protocol classes from protocol/logkv.fbs with flatc into
// src/generated/ (never committed), and makes them an ES module: flatc
// writes relative imports without an extension, which Node's ES module
// resolution (and tsc with "module": "NodeNext") refuses, so ".js" is added.
//
//   node scripts/generate.mjs [--schema PATH] [--flatc PATH] [--out DIR]
// Defaults: ../../protocol/logkv.fbs, flatc on PATH (Debian:
// flatbuffers-compiler), src/generated. LOGKV_SCHEMA and FLATC also work.
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, rmSync, statSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const option = (name, fallback) => {
  const index = args.indexOf(name);
  return index >= 0 ? args[index + 1] : fallback;
};
const schema = option('--schema', process.env.LOGKV_SCHEMA ?? join(root, '..', '..', 'protocol', 'logkv.fbs'));
const flatc = option('--flatc', process.env.FLATC ?? 'flatc');
const out = resolve(option('--out', join(root, 'src', 'generated')));

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
execFileSync(flatc, ['--ts', '-o', out, schema], { stdio: 'inherit' });

const files = [];
const walk = (dir) => {
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) walk(path);
    else if (path.endsWith('.ts')) files.push(path);
  }
};
walk(out);
for (const file of files) {
  const text = readFileSync(file, 'utf8');
  const fixed = text.replace(/(from\s+'(\.{1,2}\/[^']+?))(\.js)?'/g, "$1.js'");
  if (fixed !== text) writeFileSync(file, fixed);
}
// flatc leaves types that only the non-root side uses (Response...) out of
// its index: export every generated class and enum from it.
const index = files.find((f) => f.endsWith('logkv_generated.ts'));
let indexText = readFileSync(index, 'utf8');
for (const file of files) {
  if (file === index) continue;
  const relative = './' + file.slice(dirname(index).length + 1).replace(/\.ts$/, '.js');
  if (indexText.includes(`'${relative}'`)) continue;
  const names = [...readFileSync(file, 'utf8').matchAll(/^export (?:class|enum) (\w+)/gm)].map((m) => m[1]);
  if (names.length) indexText += `export { ${names.join(', ')} } from '${relative}';\n`;
}
writeFileSync(index, indexText);
console.log(`generate: ${files.length} files from ${schema} in ${out}`);
