# node-gyp build of the same sources cmake-js builds from native/CMakeLists.txt: both read the one
# list in native/sources.json. Node-API only, no CUDA at build time (libraries are dlopen()ed).
{
  "targets": [
    {
      "target_name": "coldstart_native",
      "sources": [
        "<!@(node -p \"require('./native/sources.json').map((f) => 'native/' + f).join(' ')\")"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags": ["-Wall", "-Wextra", "-fvisibility=hidden"],
      "cflags_cc": ["-std=c++17", "-fno-exceptions", "-fvisibility-inlines-hidden"],
      "libraries": ["-ldl"]
    }
  ]
}
