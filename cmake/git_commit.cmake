# Writes OUTPUT from TEMPLATE with @ANVIL_GIT_COMMIT@ replaced by the short
# commit of SOURCE_DIR, with "-dirty" when tracked files have changes, or
# "unknown" outside a git checkout or when git was not found (GIT false).
# Run at build time:
#   cmake -DGIT=git -DSOURCE_DIR=... -DTEMPLATE=... -DOUTPUT=... -P git_commit.cmake
# configure_file leaves OUTPUT untouched when its text would not change.
set(ANVIL_GIT_COMMIT unknown)
if(GIT)
  execute_process(COMMAND ${GIT} rev-parse --short HEAD WORKING_DIRECTORY ${SOURCE_DIR}
    RESULT_VARIABLE rc OUTPUT_VARIABLE commit OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(rc EQUAL 0)
    set(ANVIL_GIT_COMMIT ${commit})
    execute_process(COMMAND ${GIT} status --porcelain --untracked-files=no WORKING_DIRECTORY ${SOURCE_DIR}
      OUTPUT_VARIABLE changes ERROR_QUIET)
    if(changes)
      string(APPEND ANVIL_GIT_COMMIT -dirty)
    endif()
  endif()
endif()
configure_file(${TEMPLATE} ${OUTPUT} @ONLY)
