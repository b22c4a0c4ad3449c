/**
 * Builds the Clusters page as the bundle Airflow 3.3's UI loads for a plugin's `react_apps`:
 * one UMD file whose global `AirflowPlugin` is the page's component.
 *
 * React, the JSX runtime, React Router and Chakra UI are NOT bundled: Airflow's UI puts its
 * own on globalThis (`React`, `ReactJSXRuntime`, `ReactRouterDOM`, `ChakraUI`) before it loads
 * a plugin, and the page must use those very instances (one React for hooks, the host's Chakra
 * theme and colour mode, the host's router for links and the query string).
 *
 * The banner records a SHA-256 of the sources (every file of this folder but node_modules/),
 * computed as tests/browser/test_bundle.py computes it, so a test fails when the committed
 * bundle was not rebuilt after a change. Run scripts/build-ui.sh, not vite directly.
 */
import { createHash } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { join, relative, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";

import { defineConfig } from "vite";

const here = fileURLToPath(new URL(".", import.meta.url));
/** scripts/build-ui.sh builds into a temporary folder (GENNAKER_UI_OUT), then copies or compares the bundle. */
export const OUT_DIR = process.env.GENNAKER_UI_OUT ?? resolve(here, "..", "static");
export const BUNDLE = "clusters.js";

/** Every file under `dir` but node_modules/ (and other build output), as sorted POSIX paths. */
function sources(dir: string): string[] {
  const found: string[] = [];
  const walk = (d: string) => {
    for (const entry of readdirSync(d, { withFileTypes: true })) {
      if (entry.name === "node_modules" || entry.name === "dist") continue;
      const path = join(d, entry.name);
      if (entry.isDirectory()) walk(path);
      else if (entry.isFile()) found.push(relative(dir, path).split(sep).join("/"));
    }
  };
  walk(dir);
  return found.sort();
}

/** sha256 over "<path>\n<sha256 of its bytes>\n" for every source file, in order. */
export function sourcesHash(dir: string): string {
  const all = createHash("sha256");
  for (const path of sources(dir)) {
    const one = createHash("sha256").update(readFileSync(join(dir, path))).digest("hex");
    all.update(`${path}\n${one}\n`);
  }
  return all.digest("hex");
}

const HOST_GLOBALS: Record<string, string> = {
  react: "React",
  "react/jsx-runtime": "ReactJSXRuntime",
  "react-router-dom": "ReactRouterDOM",
  "@chakra-ui/react": "ChakraUI",
};

export default defineConfig({
  logLevel: "warn",
  publicDir: false,
  build: {
    outDir: OUT_DIR,
    emptyOutDir: false, // static/ also holds the nav icons
    copyPublicDir: false,
    minify: true,
    sourcemap: false,
    reportCompressedSize: false,
    target: "es2022",
    lib: {
      entry: resolve(here, "src", "main.tsx"),
      name: "AirflowPlugin",
      formats: ["umd"],
      fileName: () => BUNDLE,
    },
    rolldownOptions: {
      external: Object.keys(HOST_GLOBALS),
      output: {
        globals: HOST_GLOBALS,
        exports: "default",
        postBanner:
          `/*! gennaker Clusters page (Airflow react_apps plugin) | sources sha256:${sourcesHash(here)} | ` +
          `built by scripts/build-ui.sh from plugin/gennaker/web/ui */`,
      },
    },
  },
});
