// A plugd wasm plugin in JavaScript: `echo` and `slugify`, built with componentize-js.
import { log } from "plugd:plugin/host@0.1.0";

const ACTIONS = [
  { name: "echo", description: "Returns the payload unchanged" },
  { name: "slugify", description: "Turns `text` into a URL slug" },
];

// A thrown value becomes the `error` case of `result<string, error>`.
function fail(code, message) {
  return { payload: { code, message } };
}

function slugify(text) {
  return text
    .normalize("NFKD")
    .replace(/[\u0300-\u036f]/g, "")
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, "-")
    .replace(/^-+|-+$/g, "");
}

export const guest = {
  describe() {
    return JSON.stringify({ actions: ACTIONS });
  },

  call(action, payload) {
    let data;
    try {
      data = JSON.parse(payload);
    } catch (e) {
      throw fail("bad_payload", `the payload is not JSON: ${e.message}`);
    }
    switch (action) {
      case "echo":
        return JSON.stringify({ value: data });
      case "slugify": {
        if (typeof data?.text !== "string") {
          throw fail("bad_payload", "`text` must be a string");
        }
        const slug = slugify(data.text);
        log("debug", `slug ${slug}`);
        return JSON.stringify({ value: slug });
      }
      default:
        throw fail("unknown_action", `no action \`${action}\``);
    }
  },

  onEvent(topic, _payload) {
    log("info", `event ${topic}`);
  },
};
