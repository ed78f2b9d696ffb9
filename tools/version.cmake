# Writes the build's version into a source file, at every build, so that a
# binary names the commit it was built from. Rewrites the file only when the
# version changed, so an unchanged tree rebuilds nothing.
#   cmake -DSOURCE_DIR=... -DOUTPUT=... -DFALLBACK=... -DBUILD_TYPE=... -P version.cmake
set(version "${FALLBACK}")
find_package(Git QUIET)
if(GIT_FOUND AND EXISTS "${SOURCE_DIR}/.git")
  execute_process(COMMAND "${GIT_EXECUTABLE}" describe --tags --always --dirty
                  WORKING_DIRECTORY "${SOURCE_DIR}"
                  OUTPUT_VARIABLE described OUTPUT_STRIP_TRAILING_WHITESPACE
                  RESULT_VARIABLE failed ERROR_QUIET)
  if(NOT failed AND described)
    # A tree without tags describes as a bare commit: keep the release number.
    if(described MATCHES "^[0-9a-f]+(-dirty)?$")
      set(version "${FALLBACK}+g${described}")
    else()
      set(version "${described}")
    endif()
  endif()
endif()
set(content "// Generated at build time by tools/version.cmake; not committed.
#include \"protocol/version.h\"

namespace logkv {

const char* BuildVersion() { return \"${version}\"; }
const char* BuildType() { return \"${BUILD_TYPE}\"; }

}  // namespace logkv
")
if(EXISTS "${OUTPUT}")
  file(READ "${OUTPUT}" existing)
endif()
if(NOT "${existing}" STREQUAL "${content}")
  file(WRITE "${OUTPUT}" "${content}")
endif()
