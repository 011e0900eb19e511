# Docs tests (issue 6): the derivations' own checks, the equation -> test links, and the examples against the
# pages that quote them.
gdr2_add_test(test_docs_chunkwise test_docs_chunkwise.cpp RC_CASES 100)  # ~0.3 s per property at 100 cases
gdr2_add_test(test_docs_backward test_docs_backward.cpp)

# The examples run and print what docs/ quotes.
gdr2_add_test(test_docs_examples test_docs_examples.cpp)
target_compile_definitions(test_docs_examples PRIVATE GDR2_FAST_WEIGHT_EXE="$<TARGET_FILE:fast_weight>"
                                                      GDR2_GRADCHECK_EXE="$<TARGET_FILE:gradcheck_example>"
                                                      GDR2_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
add_dependencies(test_docs_examples fast_weight gradcheck_example)
gdr2_add_test(test_docs_family test_docs_family.cpp)

# The pages' relative links and heading anchors resolve (README.md, docs/, derivations/).
find_package(Python3 COMPONENTS Interpreter)
if(Python3_Interpreter_FOUND)
  add_test(NAME Docs.LinksResolve COMMAND ${Python3_EXECUTABLE} ${PROJECT_SOURCE_DIR}/docs/check_links.py
           --root ${PROJECT_SOURCE_DIR})
  add_test(NAME Docs.LinkCheckRejectsBrokenLinks COMMAND ${Python3_EXECUTABLE} ${PROJECT_SOURCE_DIR}/docs/check_links.py
           --self-test)
endif()
