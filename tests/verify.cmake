# gdr2-verify's tests (issue 5): file formats and tolerances, the port protocol's error paths, the mutation
# tests (seeded bugs caught and shrunk; a correct port passes 500+ cases), the Python port, the command line.
if(TARGET gdr2_verify_lib)
  gdr2_add_test(test_verify_core test_verify_core.cpp)
  target_link_libraries(test_verify_core PRIVATE gdr2_verify_lib)

  gdr2_add_test(test_verify_ports test_verify_ports.cpp)
  target_link_libraries(test_verify_ports PRIVATE gdr2_verify_lib)
  add_dependencies(test_verify_ports gdr2-example-port)
  target_compile_definitions(test_verify_ports PRIVATE
    GDR2_EXAMPLE_PORT="$<TARGET_FILE:gdr2-example-port>"
    GDR2_PORTS_DIR="${PROJECT_SOURCE_DIR}/verify/ports")

  gdr2_add_test(test_verify_cli test_verify_cli.cpp)
  target_link_libraries(test_verify_cli PRIVATE gdr2_verify_lib)
  add_dependencies(test_verify_cli gdr2-verify gdr2-example-port)
  target_compile_definitions(test_verify_cli PRIVATE
    GDR2_VERIFY_EXE="$<TARGET_FILE:gdr2-verify>"
    GDR2_EXAMPLE_PORT="$<TARGET_FILE:gdr2-example-port>")
endif()

# The Python ports are at least syntax-checked everywhere (the numpy port also runs in test_verify_ports when numpy
# is there; the torch adapter cannot run without torch). ast.parse writes no __pycache__ into the source tree.
find_package(Python3 COMPONENTS Interpreter)
if(Python3_Interpreter_FOUND)
  foreach(port numpy_port torch_port)
    add_test(NAME verify_python_syntax_${port}
      COMMAND ${Python3_EXECUTABLE} -c "import ast, sys; ast.parse(open(sys.argv[1]).read(), sys.argv[1])"
              ${PROJECT_SOURCE_DIR}/verify/ports/${port}.py)
  endforeach()
endif()

# The main job of `make verify` (every built-in target available here, default cases) holds in CI too. Its time
# (27 s on the 2-core build machine; the issue asks < 2 min) is reported in docs/performance.md, not asserted here.
if(TARGET gdr2-verify)
  add_test(NAME Verify.DefaultRunPasses COMMAND gdr2-verify --repro-dir ${PROJECT_BINARY_DIR}/verify-default-failures)
endif()
