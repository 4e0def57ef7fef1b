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

// Latin-1 letters folded to ASCII (the engine is built without Unicode normalization data).
const FOLD = {
  à: "a", á: "a", â: "a", ã: "a", ä: "a", å: "a", æ: "ae", ç: "c", è: "e", é: "e", ê: "e",
  ë: "e", ì: "i", í: "i", î: "i", ï: "i", ñ: "n", ò: "o", ó: "o", ô: "o", õ: "o", ö: "o",
  ø: "o", ù: "u", ú: "u", û: "u", ü: "u", ý: "y", ÿ: "y", ß: "ss",
};

function slugify(text) {
  return Array.from(text.toLowerCase(), (c) => FOLD[c] ?? c)
    .join("")
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
