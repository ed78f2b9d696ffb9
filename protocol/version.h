// The version of this build, shared by every binary (logkvd, logkv,
// logkv-bench): `git describe` of the tree it was built from, or the
// project's release number without git. Reported by --version, GET /health
// and the logkv_build_info metric.
#ifndef LOGKV_PROTOCOL_VERSION_H_
#define LOGKV_PROTOCOL_VERSION_H_

namespace logkv {

// Such as "0.1.0+gf0cb22e" or "v0.2.0-3-g1234abc-dirty".
const char* BuildVersion();
// CMAKE_BUILD_TYPE: Release, RelWithDebInfo, Debug (empty when unset).
const char* BuildType();

}  // namespace logkv

#endif  // LOGKV_PROTOCOL_VERSION_H_
