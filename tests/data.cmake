# Data layer (include/loom/data.h, src/data/): unit checks, `loom data prepare` end to end, the fuzz test.
add_executable(test_data test_data.c)
target_link_libraries(test_data PRIVATE loom)
add_test(NAME data_unit COMMAND test_data unit ${CMAKE_CURRENT_BINARY_DIR})

# prepare (byte, char, and gpt2 when its files are in build/share/gpt2 or $LOOM_GPT2_DIR) -> decode, split,
# chunk/thread invariance, rank shares, train on it, corrupted shards
add_test(NAME data_prepare
  COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/test_data.sh $<TARGET_FILE:loom_cli> $<TARGET_FILE:test_data> ${CMAKE_BINARY_DIR})
set_tests_properties(data_prepare PROPERTIES ENVIRONMENT "${LOOM_TEST_ENV}")

# shard headers and data, dataset.json, under mutation (see the file for ASan and libFuzzer builds)
add_executable(fuzz_shard fuzz_shard.c)
target_link_libraries(fuzz_shard PRIVATE loom)
add_test(NAME data_fuzz COMMAND fuzz_shard 100000)
