// Validate a legacy Continue config.json with Continue's own packages.
// Usage: node validate_config_json.mjs NODE_MODULES_DIR CONFIG_JSON
// Each model (and tabAutocompleteModel) against @continuedev/config-types' model schema, then the whole
// file through @continuedev/config-yaml's converter and YAML validator. Exit 0 when valid.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [modulesDir, file] = process.argv.slice(2);
const load = (rel) => import(pathToFileURL(join(modulesDir, rel)).href);
const types = await load("@continuedev/config-types/dist/index.js");
const yaml = await load("@continuedev/config-yaml/dist/index.js");

const config = JSON.parse(readFileSync(file, "utf8"));
const problems = [];
const models = [...(config.models ?? []), ...(config.tabAutocompleteModel ? [config.tabAutocompleteModel] : [])];
for (const model of models) {
  const checked = types.modelDescriptionSchema.safeParse(model);
  if (!checked.success) problems.push(`${model.title}: ${checked.error.message}`);
}
const converted = yaml.convertJsonToYamlConfig(config);
for (const error of yaml.validateConfigYaml(converted)) problems.push(error.message);
if (problems.length) {
  console.error(problems.join("\n"));
  process.exit(1);
}
console.log(`valid: ${models.length} models`);
