{
  "targets": [
    {
      "target_name": "kstreams",
      "sources": [
        "src/addon.cc",
        "src/errors.cc",
        "src/feed/feed_server.cc",
        "src/feed/tls13_records.cc",
        "src/feed_binding.cc",
        "src/engine/accept_policy.cc",
        "src/engine/address.cc",
        "src/engine/capture.cc",
        "src/engine/engine.cc",
        "src/engine/file_leg.cc",
        "src/engine/flusher.cc",
        "src/engine/mirror_leg.cc",
        "src/engine/pipes.cc",
        "src/engine/primary.cc",
        "src/engine/sockets.cc",
        "src/engine/transform.cc",
        "src/engine/worker.cc",
        "src/engine_binding.cc",
        "src/interception.cc",
        "src/interception_binding.cc",
        "src/replay/replayer.cc",
        "src/replay_binding.cc"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "bpf/.output"
      ],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS", "_GNU_SOURCE"],
      "cflags": ["-fvisibility=hidden", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "cflags_cc": ["-fvisibility=hidden", "-std=c++17", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "libraries": ["-lbpf", "-lelf", "-lz", "-lpthread"]
    }
  ]
}
