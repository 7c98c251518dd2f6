# Devices (issue 14): the backend seam.
# Every kernel on every other backend of this build against the CPU backend (cpu-isolated: bit for bit; a
# direct host access to one of its buffers must fault).
add_executable(test_backend_ops test_backend_ops.c)
target_link_libraries(test_backend_ops PRIVATE loom)
add_test(NAME backend_ops COMMAND test_backend_ops cpu-isolated)

# The same runs on cpu and cpu-isolated agree to the bit (every layout, precision, optimizer, offload,
# resume, generation).
add_test(NAME device_equal COMMAND ${LOOM_SYS_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/test_device_equal.py $<TARGET_FILE:loom_cli>)

# The training, parallel, offload and generation tests, run again on the isolating backend: nothing above
# the seam may touch a buffer directly (each test's own checks, against one process or PyTorch, hold there).
# The data-parallel equivalence and pipeline checks are not repeated here: device_equal already runs every
# ZeRO stage and both pipeline schedules on cpu-isolated (bit for bit against cpu), and the two would add
# three minutes to the suite.
set(LOOM_ISOLATED_ENV "${LOOM_TEST_ENV};LOOM_TEST_DEVICE=cpu-isolated")
add_test(NAME isolated_resume_exact COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/test_resume.sh $<TARGET_FILE:loom_cli>)
add_test(NAME isolated_torch_ref_gpt2
  COMMAND sh -c "$<TARGET_FILE:dump_ref> gpt2 dump_iso_gpt2.bin full cpu-isolated && ${LOOM_TORCH_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/torch_ref.py dump_iso_gpt2.bin"
  WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})
add_test(NAME isolated_torch_ref_llama
  COMMAND sh -c "$<TARGET_FILE:dump_ref> llama dump_iso_llama.bin none cpu-isolated && ${LOOM_TORCH_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/torch_ref.py dump_iso_llama.bin"
  WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})
add_test(NAME isolated_generate_kv_cache COMMAND test_generate cpu-isolated)
foreach(check reshard tensor sequence)
  add_test(NAME isolated_dist_${check} COMMAND ${LOOM_SYS_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/test_dist.py $<TARGET_FILE:loom_cli> ${check})
  list(APPEND LOOM_ISOLATED_DIST isolated_dist_${check})
endforeach()
add_test(NAME isolated_offload COMMAND ${LOOM_SYS_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/test_offload.py $<TARGET_FILE:loom_cli>)
set_tests_properties(isolated_resume_exact ${LOOM_ISOLATED_DIST} isolated_offload PROPERTIES
  SKIP_RETURN_CODE 77 ENVIRONMENT "${LOOM_ISOLATED_ENV}" RUN_SERIAL TRUE)
set_tests_properties(device_equal PROPERTIES ENVIRONMENT "${LOOM_TEST_ENV}" RUN_SERIAL TRUE)

# Out of memory at every allocation point of a training run: a clear error each time; under valgrind
# (the portable build: valgrind cannot decode AVX-512), no leak.
add_executable(test_oom test_oom.c)
target_link_libraries(test_oom PRIVATE loom)
add_test(NAME oom_every_allocation COMMAND test_oom cpu-isolated)
if(VALGRIND)
  add_executable(test_oom-portable test_oom.c)
  target_link_libraries(test_oom-portable PRIVATE loom-portable)
  add_test(NAME oom_no_leak
    COMMAND ${VALGRIND} --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite
            --suppressions=${CMAKE_CURRENT_SOURCE_DIR}/valgrind.supp $<TARGET_FILE:test_oom-portable>)
  set_tests_properties(oom_no_leak PROPERTIES ENVIRONMENT "${LOOM_TEST_ENV};OPENBLAS_CORETYPE=Haswell")
endif()
set_tests_properties(oom_every_allocation PROPERTIES ENVIRONMENT "${LOOM_TEST_ENV}")

# The CUDA backend's kernels and host code, without a GPU: built against tests/cuda_emu's CPU emulation of the
# CUDA execution model and checked kernel by kernel against the CPU backend (~20 s). It proves indexing,
# reductions, masking and the host code around them; not speed, real asynchrony or hardware limits.
find_program(LOOM_GXX g++)
if(LOOM_HAVE_CUDA AND LOOM_GXX)
  add_test(NAME cuda_emu_ops COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/cuda_emu/run.sh ${CMAKE_BINARY_DIR})
  set_tests_properties(cuda_emu_ops PROPERTIES ENVIRONMENT "${LOOM_TEST_ENV}" RUN_SERIAL TRUE)
endif()
