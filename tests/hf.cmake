# Hugging Face interchange (loom import / loom export, safetensors): included from tests/CMakeLists.txt.
#   hf_roundtrip_gpt2, hf_roundtrip_llama  PyTorch-equal logits after import (F32/BF16/F16, single/sharded),
#                                           bit-exact export, exact re-import, fine-tuning from an import
#   hf_errors                              damaged files and configs: one-line errors, nothing written
#   hf_fuzz                                mutated safetensors headers and index JSON (run it under ASan too)
add_executable(test_hf_logits test_hf_logits.c)
target_link_libraries(test_hf_logits PRIVATE loom)
add_executable(fuzz_safetensors fuzz_safetensors.c)
target_link_libraries(fuzz_safetensors PRIVATE loom)

foreach(family gpt2 llama)
  add_test(NAME hf_roundtrip_${family}
    COMMAND ${LOOM_TORCH_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/test_hf.py roundtrip ${family}
            $<TARGET_FILE:loom_cli> $<TARGET_FILE:test_hf_logits> hf_work_${family}
    WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})
endforeach()
add_test(NAME hf_errors
  COMMAND ${LOOM_TORCH_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/test_hf.py errors $<TARGET_FILE:loom_cli> hf_work_errors
  WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})
add_test(NAME hf_fuzz COMMAND fuzz_safetensors 200000)
set_tests_properties(hf_roundtrip_gpt2 hf_roundtrip_llama hf_errors PROPERTIES ENVIRONMENT "${LOOM_TEST_ENV}")
