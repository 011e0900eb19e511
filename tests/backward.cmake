# Backward tests (issue 3): the two backward forms, AD, finite differences (gradcheck), negative controls.
gdr2_add_test(test_backward_forms test_backward_forms.cpp RC_CASES 40)
gdr2_add_test(test_autodiff test_autodiff.cpp RC_CASES 30)
gdr2_add_test(test_gradcheck test_gradcheck.cpp)
