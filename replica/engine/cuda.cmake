# The CUDA backend, built when CORRAL_CUDA is ON (the top-level option, ON by
# default when nvcc is found). It builds replica/engine/backend_cuda*.c and the
# backend_cuda_kern*.cu kernels as a shared module, libcorral_cuda.so, placed
# next to corral-replica, linking cudart and cuBLAS (and cuDNN when found,
# unless CORRAL_CUDNN=OFF). The engine dlopen()s it only when a cuda:N device
# is requested (backend_cuda_load.c), so a CPU replica never maps the CUDA
# libraries. corral_engine gets CORRAL_HAVE_CUDA (PUBLIC) and exports its
# executables' symbols (the module calls the engine's reference kernels,
# errors and logging from the process that loads it).
#
# Included from this folder's CMakeLists.txt after corral_engine exists. It
# sets CORRAL_HAVE_CUDA_BACKEND in the parent scope too, for the tests that
# only exist with the backend, and makes CUDA::cudart visible to them.
set(CORRAL_HAVE_CUDA_BACKEND OFF)
if(CORRAL_CUDA)
  if(NOT CMAKE_CUDA_COMPILER)
    message(FATAL_ERROR "CORRAL_CUDA=ON but no CUDA compiler (nvcc) was found")
  endif()
  # Two targets keep the build short: Ampere and Hopper binaries, plus PTX for newer GPUs.
  set(CMAKE_CUDA_ARCHITECTURES "80;90" CACHE STRING "CUDA architectures to build for")
  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)
  set_target_properties(CUDA::cudart CUDA::cublas PROPERTIES IMPORTED_GLOBAL TRUE)
  # The project's warning and sanitizer flags are GCC's: keep them for C only; nvcc
  # gets its own warnings-as-errors below. Linking stays with the C compiler.
  get_directory_property(CORRAL_DIR_OPTS COMPILE_OPTIONS)
  set(CORRAL_C_ONLY_OPTS "")
  foreach(o IN LISTS CORRAL_DIR_OPTS)
    list(APPEND CORRAL_C_ONLY_OPTS "$<$<COMPILE_LANGUAGE:C>:${o}>")
  endforeach()
  set_property(DIRECTORY PROPERTY COMPILE_OPTIONS ${CORRAL_C_ONLY_OPTS})
  set(CMAKE_CUDA_LINKER_PREFERENCE_PROPAGATES 0)
  set(CORRAL_CUDNN_FOUND OFF)
  if(CORRAL_CUDNN)
    find_path(CORRAL_CUDNN_INCLUDE cudnn.h HINTS ${CUDAToolkit_INCLUDE_DIRS})
    find_library(CORRAL_CUDNN_LIB cudnn HINTS ${CUDAToolkit_LIBRARY_DIR})
    if(CORRAL_CUDNN_INCLUDE AND CORRAL_CUDNN_LIB)
      set(CORRAL_CUDNN_FOUND ON)
    endif()
  endif()
  message(STATUS "CUDA backend: nvcc ${CMAKE_CUDA_COMPILER_VERSION}, architectures "
                 "${CMAKE_CUDA_ARCHITECTURES}, cuDNN ${CORRAL_CUDNN_FOUND}")
  set(CORRAL_HAVE_CUDA_BACKEND ON)
  # SHARED rather than MODULE so that the backend's unit test can also link it directly.
  add_library(corral_cuda SHARED backend_cuda.c backend_cuda_step.c backend_cuda_conv.c
              backend_cuda_err.c backend_cuda_kern.cu backend_cuda_kern_nn.cu)
  set_target_properties(corral_cuda PROPERTIES
    OUTPUT_NAME corral_cuda
    LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/replica
    CUDA_RUNTIME_LIBRARY Shared
    POSITION_INDEPENDENT_CODE ON
    LINKER_LANGUAGE C)
  # Compile against the engine's headers and definitions only: its code comes from the
  # executable at load time (see the export below), never a second copy.
  target_include_directories(corral_cuda PRIVATE
    $<TARGET_PROPERTY:corral_engine,INTERFACE_INCLUDE_DIRECTORIES>)
  target_compile_definitions(corral_cuda PUBLIC CORRAL_HAVE_CUDA=1)
  target_compile_options(corral_cuda PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings -Xcompiler=-Wall,-Wextra,-Werror,-Wno-unused-parameter>)
  target_link_libraries(corral_cuda PRIVATE CUDA::cudart CUDA::cublas Threads::Threads)
  if(CORRAL_CUDNN_FOUND)
    target_compile_definitions(corral_cuda PRIVATE CORRAL_HAVE_CUDNN=1)
    target_include_directories(corral_cuda PRIVATE ${CORRAL_CUDNN_INCLUDE})
    target_link_libraries(corral_cuda PRIVATE ${CORRAL_CUDNN_LIB})
  endif()
  target_compile_definitions(corral_engine PUBLIC CORRAL_HAVE_CUDA=1)
  target_link_libraries(corral_engine PUBLIC ${CMAKE_DL_LIBS})
  # Every executable linking the engine exports its symbols for the module, and
  # finds it in the build tree when it is not next to the executable.
  target_link_options(corral_engine INTERFACE "LINKER:--export-dynamic"
                      "LINKER:-rpath,${CMAKE_BINARY_DIR}/replica")
  # The engine generates the ONNX headers the module compiles against.
  add_dependencies(corral_cuda corral_engine)
  # The replica always comes with its module; it is defined after this folder, so the
  # dependency is added once the whole tree has been read.
  function(corral_cuda_replica_dep)
    if(TARGET corral-replica)
      add_dependencies(corral-replica corral_cuda)
    endif()
  endfunction()
  cmake_language(DEFER DIRECTORY ${CMAKE_SOURCE_DIR} CALL corral_cuda_replica_dep)
endif()
set(CORRAL_HAVE_CUDA_BACKEND ${CORRAL_HAVE_CUDA_BACKEND} PARENT_SCOPE)
