import { defineConfig } from 'vitest/config';

// Integration tests run the real parts on this machine, as root:
//  - *.kernel.test.ts: the native data plane in real network namespaces on the real kernel;
//  - *.int.test.ts: the control plane against a real kube-apiserver + etcd started by the global setup.
// Kernel tests measure throughput and move hundreds of MB, so files run one at a time.
export default defineConfig({
  test: {
    include: ['{api,runtime,operator,sidecar,native,bench,e2e,charts,test}/**/*.{int,kernel}.test.ts'],
    exclude: ['**/node_modules/**', '**/dist/**'],
    globalSetup: ['test/integration-setup.ts'],
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});
