# Precompiled headers (LOGKV_PCH). Most of a translation unit's compile time
# here is spent parsing the same standard library, Abseil, nlohmann::json and
# OpenSSL headers again: server/node.cc reads 217,000 preprocessed lines, of
# which 2,600 are its own. Those headers are parsed once per build into one
# precompiled header, which every C++ target with the same compile flags
# reuses (REUSE_FROM), so the parse is not repeated per target either.
#
# Only third-party headers are precompiled: the layering of our own headers
# (logkv_headers() in the top-level CMakeLists.txt) is unchanged. A source
# that forgets a standard include still compiles here; the fuzz build, which
# does not precompile, and -DLOGKV_PCH=OFF builds catch that.

set(LOGKV_PCH_HEADERS
  <algorithm> <atomic> <chrono> <cstddef> <cstdint> <cstring> <deque> <filesystem>
  <functional> <map> <memory> <optional> <set> <string> <string_view> <thread>
  <unordered_map> <utility> <variant> <vector>
  <absl/base/thread_annotations.h> <absl/container/btree_map.h>
  <absl/container/flat_hash_map.h> <absl/container/flat_hash_set.h>
  <absl/status/status.h> <absl/status/statusor.h> <absl/strings/ascii.h>
  <absl/strings/escaping.h> <absl/strings/match.h> <absl/strings/numbers.h>
  <absl/strings/str_cat.h> <absl/strings/str_format.h> <absl/strings/str_split.h>
  <absl/strings/string_view.h> <absl/synchronization/mutex.h> <absl/time/clock.h>
  <absl/time/time.h> <nlohmann/json.hpp> <openssl/ssl.h> <uv.h>)

# The libraries whose headers LOGKV_PCH_HEADERS names.
set(LOGKV_PCH_LIBRARIES absl::btree absl::flat_hash_map absl::flat_hash_set absl::status
  absl::statusor absl::strings absl::str_format absl::synchronization absl::time
  nlohmann_json::nlohmann_json OpenSSL::SSL PkgConfig::LIBUV)

# logkv_pch_target(name [EXTRA headers...]): an object library that only builds
# the precompiled header, with the compile flags of the directory it is
# declared in.
function(logkv_pch_target name)
  cmake_parse_arguments(ARG "" "" "EXTRA;LIBS" ${ARGN})
  set(source ${CMAKE_CURRENT_BINARY_DIR}/${name}.cc)
  if(NOT EXISTS ${source})
    file(WRITE ${source} "// The precompiled header's own translation unit.\n")
  endif()
  add_library(${name} OBJECT ${source})
  target_link_libraries(${name} PRIVATE ${LOGKV_PCH_LIBRARIES} ${ARG_LIBS})
  target_precompile_headers(${name} PRIVATE ${LOGKV_PCH_HEADERS} ${ARG_EXTRA})
endfunction()

# Every build-system target declared in dir and below it.
function(logkv_targets_under dir out)
  get_property(targets DIRECTORY ${dir} PROPERTY BUILDSYSTEM_TARGETS)
  get_property(subdirectories DIRECTORY ${dir} PROPERTY SUBDIRECTORIES)
  foreach(subdirectory IN LISTS subdirectories)
    logkv_targets_under(${subdirectory} more)
    list(APPEND targets ${more})
  endforeach()
  set(${out} ${targets} PARENT_SCOPE)
endfunction()

# logkv_reuse_pch(pch [LINKING regex] DIRS dirs...): every C++ target under
# dirs compiled with the same flags as pch (and, with LINKING, linking a
# library whose name matches regex, as the GoogleTest suites get its
# definitions) reuses its precompiled header. Position-independent targets
# (the client library) and targets with options of their own that change
# code generation (an -O) compile without it.
function(logkv_reuse_pch pch)
  cmake_parse_arguments(ARG "" "LINKING" "DIRS" ${ARGN})
  get_target_property(pch_options ${pch} COMPILE_OPTIONS)
  string(REGEX MATCHALL "-O[0-9sg]?" pch_levels "${pch_options}")
  foreach(dir IN LISTS ARG_DIRS)
    logkv_targets_under(${dir} targets)
    foreach(target IN LISTS targets)
      if(target STREQUAL pch)
        continue()
      endif()
      get_target_property(type ${target} TYPE)
      if(NOT type MATCHES "^(STATIC_LIBRARY|OBJECT_LIBRARY|EXECUTABLE)$")
        continue()
      endif()
      get_target_property(pic ${target} POSITION_INDEPENDENT_CODE)
      get_target_property(options ${target} COMPILE_OPTIONS)
      get_target_property(sources ${target} SOURCES)
      string(REGEX MATCHALL "-O[0-9sg]?" levels "${options}")
      if(pic OR NOT levels STREQUAL pch_levels OR NOT "${sources}" MATCHES "\\.cc(;|$)")
        continue()
      endif()
      if(ARG_LINKING)
        get_target_property(libraries ${target} LINK_LIBRARIES)
        if(NOT "${libraries}" MATCHES "${ARG_LINKING}")
          continue()
        endif()
      endif()
      target_precompile_headers(${target} REUSE_FROM ${pch})
    endforeach()
  endforeach()
endfunction()
