add_executable(test_generate test_generate.c)
target_link_libraries(test_generate PRIVATE loom)
add_test(NAME generate_kv_cache COMMAND test_generate)
