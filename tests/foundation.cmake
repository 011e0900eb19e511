# Foundation tests (issue 2): the forward forms, the family, the fast-weight view, precisions, batched API.
gdr2_add_test(test_forward_forms test_forward_forms.cpp RC_CASES 100)
gdr2_add_test(test_family test_family.cpp RC_CASES 100)
gdr2_add_test(test_fast_weight test_fast_weight.cpp RC_CASES 200)
gdr2_add_test(test_precision test_precision.cpp RC_CASES 50)
gdr2_add_test(test_batched test_batched.cpp RC_CASES 100)

# find_package(gdr2 CONFIG) from another project: install into the build tree, then configure, build and run
# tests/consumer against that prefix.
add_test(NAME Package.InstallIntoPrefix
  COMMAND ${CMAKE_COMMAND} --install ${PROJECT_BINARY_DIR} --prefix ${PROJECT_BINARY_DIR}/consumer-prefix)
set_tests_properties(Package.InstallIntoPrefix PROPERTIES FIXTURES_SETUP gdr2_installed)
add_test(NAME Package.FindPackageConsumer
  COMMAND ${CMAKE_CTEST_COMMAND} --build-and-test ${CMAKE_CURRENT_SOURCE_DIR}/consumer
          ${PROJECT_BINARY_DIR}/consumer-build --build-generator ${CMAKE_GENERATOR}
          --build-options -DCMAKE_PREFIX_PATH=${PROJECT_BINARY_DIR}/consumer-prefix -DCMAKE_BUILD_TYPE=Release
          --test-command consumer)
set_tests_properties(Package.FindPackageConsumer PROPERTIES FIXTURES_REQUIRED gdr2_installed
  PASS_REGULAR_EXPRESSION "consumer: \\|recurrent - chunkwise\\| = ")

# gdr2-bench runs (not timed: speed targets live in the benchmark's output, never in tests).
add_test(NAME Bench.ReferenceRunsQuick COMMAND gdr2-bench --quick --repeats 1 --filter reference/)
