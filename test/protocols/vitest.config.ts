import { defineConfig } from 'vitest/config';

// The protocol tests alone (real servers through `kstreams run`, in network namespaces, as root), without
// the integration run's control plane:  npx vitest run -c test/protocols/vitest.config.ts [file]
// In the full integration run they are picked up once vitest.integration.config.ts includes test/.
export default defineConfig({
  test: {
    root: new URL('../..', import.meta.url).pathname,
    include: ['test/protocols/**/*.kernel.test.ts'],
    exclude: ['**/node_modules/**', '**/dist/**'],
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});
