# Runs at install time (cmake --install, and CPack's staging install), when
# the prefix is known: installs the systemd unit naming the installed logkvd
# and config file, and the default config file. The config file goes to /etc
# for the prefix /usr (the Debian package), else to PREFIX/etc.
# A config file already there is kept (an operator's edits are not
# overwritten), and the default is put beside it as logkvd.toml.default.
#   Set before including: LOGKV_PACKAGING_DIR (this folder), LOGKV_BINDIR,
#   LOGKV_STAGING_DIR (a folder of the build tree).
if(CMAKE_INSTALL_PREFIX STREQUAL "/usr")
  set(logkv_sysconfdir "/etc")
else()
  set(logkv_sysconfdir "${CMAKE_INSTALL_PREFIX}/etc")
endif()
if(IS_ABSOLUTE "${LOGKV_BINDIR}")
  set(logkv_bindir "${LOGKV_BINDIR}")
else()
  set(logkv_bindir "${CMAKE_INSTALL_PREFIX}/${LOGKV_BINDIR}")
endif()
set(logkv_staging "${LOGKV_STAGING_DIR}")
file(MAKE_DIRECTORY "${logkv_staging}")
file(READ "${LOGKV_PACKAGING_DIR}/logkvd.service" unit)
string(REPLACE "/usr/bin/logkvd" "${logkv_bindir}/logkvd" unit "${unit}")
string(REPLACE "/etc/logkv/" "${logkv_sysconfdir}/logkv/" unit "${unit}")
file(WRITE "${logkv_staging}/logkvd.service" "${unit}")
file(INSTALL DESTINATION "${CMAKE_INSTALL_PREFIX}/lib/systemd/system" TYPE FILE
     FILES "${logkv_staging}/logkvd.service")
if(EXISTS "$ENV{DESTDIR}${logkv_sysconfdir}/logkv/logkvd.toml")
  file(COPY_FILE "${LOGKV_PACKAGING_DIR}/logkvd.toml" "${logkv_staging}/logkvd.toml.default")
  file(INSTALL DESTINATION "${logkv_sysconfdir}/logkv" TYPE FILE
       FILES "${logkv_staging}/logkvd.toml.default")
else()
  file(INSTALL DESTINATION "${logkv_sysconfdir}/logkv" TYPE FILE
       FILES "${LOGKV_PACKAGING_DIR}/logkvd.toml")
endif()
