# Writes one man page from a program's --help and --version output with
# help2man, gzipped as Debian installs man pages. For logkv, every command's
# own help (logkv help CMD) becomes a COMMANDS section.
#   cmake -DHELP2MAN=... -DPROGRAM=... -DSECTION=1 -DNAME=... -DOUTPUT=x.1.gz
#         [-DCOMMANDS="put;get"] -P man.cmake
set(include_file "${OUTPUT}.include")
file(WRITE "${include_file}" "")
if(COMMANDS)
  file(APPEND "${include_file}" "[COMMANDS]\n")
  foreach(command IN LISTS COMMANDS)
    execute_process(COMMAND "${PROGRAM}" help ${command} OUTPUT_VARIABLE text
                    RESULT_VARIABLE failed)
    if(failed)
      message(FATAL_ERROR "${PROGRAM} help ${command} failed")
    endif()
    # Roff: a leading dot or quote would be a request, a backslash an escape.
    string(REPLACE "\\" "\\e" text "${text}")
    string(REGEX REPLACE "(^|\n)([.'])" "\\1\\\\&\\2" text "${text}")
    file(APPEND "${include_file}" ".SS ${command}\n.nf\n${text}.fi\n")
  endforeach()
endif()
file(APPEND "${include_file}" "[SEE ALSO]\nlogkvd(8), logkv(1), logkv-bench(1)\n")
get_filename_component(page "${OUTPUT}" NAME_WLE)
set(page_file "${OUTPUT}.tmp/${page}")
file(MAKE_DIRECTORY "${OUTPUT}.tmp")
execute_process(
  COMMAND "${HELP2MAN}" --no-info --no-discard-stderr "--section=${SECTION}" "--name=${NAME}"
          "--include=${include_file}" "--output=${page_file}" "${PROGRAM}"
  RESULT_VARIABLE failed)
if(failed)
  message(FATAL_ERROR "help2man failed for ${PROGRAM}")
endif()
# -n: no name or time stamp in the archive, so the same page gives the same bytes.
execute_process(COMMAND gzip -n -9 -f "${page_file}" RESULT_VARIABLE failed)
if(failed)
  message(FATAL_ERROR "gzip failed for ${page_file}")
endif()
file(RENAME "${page_file}.gz" "${OUTPUT}")
file(REMOVE_RECURSE "${OUTPUT}.tmp" "${include_file}")
