// A plugd wasm plugin in JavaScript: `echo`, `slugify` and `lookup`, built with componentize-js
// for the world `plugd:plugin/plugin-full@0.2.0` (`wit/plugd-0.2.wit`): it also exports the
// optional `lifecycle` and `tasks` interfaces.
import { log } from "plugd:plugin/host@0.2.0";

const ACTIONS = [
  { name: "echo", description: "Returns the payload unchanged" },
  { name: "slugify", description: "Turns `text` into a URL slug" },
  { name: "lookup", description: "Finds `key` in a tiny table; 404 when it is missing" },
  { name: "kaboom", description: "Throws an Error, whose message reaches the caller" },
];

const TABLE = { ada: "Ada Lovelace", alan: "Alan Turing" };

// A failure the caller sees: `code` and `message`, and a `status` in 400..=499 when the caller
// is at fault (e.g. 404 `not_found`); without a status it is the plugin's failure (502).
class PluginError extends Error {
  constructor(code, message, status) {
    super(message);
    this.payload = { code, message, status };
  }
}

// A thrown value becomes the `error` case of `result<_, error>` only if it carries that
// record as `payload`: anything else (a bug, `throw new Error(...)`) is turned into one here,
// so its message reaches the caller instead of a bare trap.
function guarded(fn) {
  try {
    return fn();
  } catch (e) {
    if (e instanceof PluginError) throw e;
    throw new PluginError("plugin_error", `${e?.name ?? "Error"}: ${e?.message ?? e}`);
  }
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

function parse(payload) {
  try {
    return JSON.parse(payload);
  } catch (e) {
    throw new PluginError("bad_payload", `the payload is not JSON: ${e.message}`);
  }
}

export const guest = {
  describe() {
    return JSON.stringify({ actions: ACTIONS });
  },

  call(action, payload) {
    return guarded(() => {
      const data = parse(payload);
      switch (action) {
        case "echo":
          return JSON.stringify({ value: data });
        case "slugify": {
          if (typeof data?.text !== "string") {
            throw new PluginError("bad_payload", "`text` must be a string");
          }
          const slug = slugify(data.text);
          log("debug", `slug ${slug}`);
          return JSON.stringify({ value: slug });
        }
        case "lookup": {
          const name = TABLE[data?.key];
          if (name === undefined) {
            throw new PluginError("not_found", `no entry \`${data?.key}\``, 404);
          }
          return JSON.stringify({ value: name });
        }
        case "kaboom":
          // An unexpected exception: `guarded` keeps its message.
          throw new Error("js kaboom");
        default:
          throw new PluginError("unknown_action", `no action \`${action}\``);
      }
    });
  },

  onEvent(topic, _payload) {
    log("info", `event ${topic}`);
  },
};

export const lifecycle = {
  onStart() {
    log("info", "started");
  },

  onStop() {
    log("info", "stopping");
  },

  // Settings that are not a JSON object are refused (the old ones stay).
  onParamsChanged(params) {
    guarded(() => {
      const value = JSON.parse(params);
      if (typeof value !== "object" || value === null || Array.isArray(value)) {
        throw new PluginError("bad_params", "the settings must be a JSON object", 400);
      }
    });
  },
};

export const tasks = {
  // One task: `slugify` over a list of texts.
  runTask(task, payload) {
    return guarded(() => {
      if (task !== "slugify") {
        throw new PluginError("unknown_task", `no task \`${task}\``);
      }
      const texts = parse(payload)?.texts;
      if (!Array.isArray(texts)) {
        throw new PluginError("bad_payload", "`texts` must be a list", 400);
      }
      return JSON.stringify({ value: texts.map((t) => slugify(String(t))) });
    });
  },
};
