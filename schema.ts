/**
 * `deno task schema`: writes config.schema.json, the JSON Schema of the
 * config file, generated from the same zod schema that validates it. Editors
 * use it to complete and check config files (lb.example.yaml refers to it).
 *
 * @module
 */

import { jsonSchema } from "./config.ts";

const schema = {
  title: "TCP load balancer configuration",
  ...jsonSchema(),
};
await Deno.writeTextFile(
  new URL("./config.schema.json", import.meta.url),
  JSON.stringify(schema, null, 2) + "\n",
);
console.log("wrote config.schema.json");
