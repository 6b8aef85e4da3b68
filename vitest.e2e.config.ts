import { defineConfig } from 'vitest/config';

// End-to-end journeys against the cluster named by KUBECONFIG (kind, or the local single-node cluster).
export default defineConfig({
  test: {
    include: ['e2e/**/*.e2e.test.ts'],
    // Brings up the local single-node cluster unless KUBECONFIG names one (e.g. kind).
    globalSetup: ['e2e/cluster/local/e2e-setup.ts'],
    fileParallelism: false,
    testTimeout: 300_000,
    hookTimeout: 300_000,
  },
});
