# ql_module(NAME SOURCES ... DEPS ... PRIVATE_DEPS ...): one static library per folder,
# named ql_<NAME>. A folder with no sources yet is an INTERFACE library carrying only its
# include directory and dependencies.
#
# NOTE(layering): the source root is never on the include path. Each module gets its own
# directory under build/inc/<name>/ holding one symlink, <name> -> the source folder, and
# exports it as a PUBLIC include directory. So `#include "model/gguf.h"` compiles only in a
# target that links ql_model (directly or through a module that does): an include that
# breaks the layering fails to build.
function(ql_module name)
  cmake_parse_arguments(M "" "" "SOURCES;DEPS;PRIVATE_DEPS" ${ARGN})
  set(inc "${CMAKE_BINARY_DIR}/inc/${name}")
  file(MAKE_DIRECTORY "${inc}")
  if(NOT EXISTS "${inc}/${name}")
    file(CREATE_LINK "${CMAKE_SOURCE_DIR}/${name}" "${inc}/${name}" SYMBOLIC)
  endif()
  if(M_SOURCES)
    add_library(ql_${name} STATIC ${M_SOURCES})
    target_include_directories(ql_${name} PUBLIC "${inc}")
    target_link_libraries(ql_${name} PUBLIC ${M_DEPS} PRIVATE ${M_PRIVATE_DEPS})
  else()
    add_library(ql_${name} INTERFACE)
    target_include_directories(ql_${name} INTERFACE "${inc}")
    target_link_libraries(ql_${name} INTERFACE ${M_DEPS})
  endif()
endfunction()
