import { defineConfig } from "vitest/config";
import react from "@vitejs/plugin-react";

// The app talks to the Steerflow server at the same origin. `npm run dev`
// proxies the API to a server on STEERFLOW_URL (default http://127.0.0.1:8188).
const target = process.env.STEERFLOW_URL ?? "http://127.0.0.1:8188";
const api = [
  "/object_info", "/prompt", "/queue", "/history", "/interrupt", "/view",
  "/upload", "/workflows", "/workflow/convert", "/models", "/system_stats",
];

export default defineConfig({
  plugins: [react()],
  base: "./",
  build: {
    target: "es2022",
    sourcemap: false,
    chunkSizeWarningLimit: 600,
  },
  server: {
    proxy: {
      ...Object.fromEntries(api.map((p) => [p, { target, changeOrigin: false }])),
      "/ws": { target, ws: true },
    },
  },
  test: {
    include: ["src/**/*.test.ts"],
    environment: "node",
  },
});
