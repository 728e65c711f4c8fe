# System dependencies: libuv, jansson, cmocka (pkg-config first, then find_library, both
# honouring CMAKE_PREFIX_PATH), llhttp (a system library, else its C sources from Debian's
# node-llhttp in /usr/share/llhttp, or share/llhttp under CMAKE_PREFIX_PATH).
find_package(PkgConfig QUIET)
find_package(Threads REQUIRED)

# ql_find_dep(<target> <pkg-config name> <header> <library names...>) defines an imported
# target ql::<target>, or fails with a message saying what to install.
function(ql_find_dep tgt pcname header)
  set(libnames ${ARGN})
  if(TARGET ql::${tgt})
    return()
  endif()
  set(_found FALSE)
  if(PKG_CONFIG_FOUND)
    set(PKG_CONFIG_USE_CMAKE_PREFIX_PATH ON)
    pkg_check_modules(PC_${tgt} QUIET IMPORTED_TARGET GLOBAL ${pcname})
    if(PC_${tgt}_FOUND)
      add_library(ql::${tgt} ALIAS PkgConfig::PC_${tgt})
      set(_found TRUE)
    endif()
  endif()
  if(NOT _found)
    find_path(${tgt}_INCLUDE_DIR ${header})
    find_library(${tgt}_LIBRARY NAMES ${libnames})
    if(${tgt}_INCLUDE_DIR AND ${tgt}_LIBRARY)
      add_library(ql::${tgt} UNKNOWN IMPORTED GLOBAL)
      set_target_properties(ql::${tgt} PROPERTIES
        IMPORTED_LOCATION "${${tgt}_LIBRARY}"
        INTERFACE_INCLUDE_DIRECTORIES "${${tgt}_INCLUDE_DIR}")
      set(_found TRUE)
    endif()
  endif()
  if(NOT _found)
    message(FATAL_ERROR "quill needs ${pcname} (${header}); run scripts/install-deps.sh")
  endif()
endfunction()

ql_find_dep(uv libuv uv.h uv uv_a)
ql_find_dep(jansson jansson jansson.h jansson)
if(QL_BUILD_TESTS)
  ql_find_dep(cmocka cmocka cmocka.h cmocka)
endif()

# llhttp: a system library where one exists, else its sources.
if(NOT TARGET ql::llhttp)
  find_path(LLHTTP_SYS_INCLUDE_DIR llhttp.h)
  find_library(LLHTTP_SYS_LIBRARY NAMES llhttp)
  if(LLHTTP_SYS_INCLUDE_DIR AND LLHTTP_SYS_LIBRARY)
    add_library(ql::llhttp UNKNOWN IMPORTED GLOBAL)
    set_target_properties(ql::llhttp PROPERTIES
      IMPORTED_LOCATION "${LLHTTP_SYS_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${LLHTTP_SYS_INCLUDE_DIR}")
    message(STATUS "quill: llhttp from ${LLHTTP_SYS_LIBRARY}")
  else()
    set(_llhttp_src "")
    set(_llhttp_inc "")
    foreach(prefix ${CMAKE_PREFIX_PATH} /usr)
      if(EXISTS "${prefix}/share/llhttp/llhttp.c" AND NOT _llhttp_src)
        set(_llhttp_src "${prefix}/share/llhttp")
        # the header beside the sources (Debian's node-llhttp keeps it under share/include),
        # or in the prefix's include/ (../shared/device/pack-deps.sh's .devdeps)
        foreach(cand "${prefix}/share/include/llhttp" "${prefix}/share/llhttp/include"
                     "${prefix}/include/llhttp" "${prefix}/share/llhttp" "${prefix}/include")
          if(EXISTS "${cand}/llhttp.h" AND NOT _llhttp_inc)
            set(_llhttp_inc "${cand}")
          endif()
        endforeach()
      endif()
    endforeach()
    if(NOT _llhttp_src OR NOT _llhttp_inc)
      message(FATAL_ERROR "quill needs llhttp: libllhttp-dev, or node-llhttp (its C sources) on Debian 12 (scripts/install-deps.sh)")
    endif()
    message(STATUS "quill: llhttp built from ${_llhttp_src}")
    add_library(ql_llhttp STATIC "${_llhttp_src}/api.c" "${_llhttp_src}/http.c" "${_llhttp_src}/llhttp.c")
    target_include_directories(ql_llhttp SYSTEM PUBLIC "${_llhttp_inc}")
    # third-party code: its own warnings are not ours to fix
    target_compile_options(ql_llhttp PRIVATE -w)
    add_library(ql::llhttp ALIAS ql_llhttp)
  endif()
endif()
