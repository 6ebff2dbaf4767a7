# Images in, labels out: JPEG, PNG and WebP images of several sizes classified through a
# real router and replica and compared with torchvision's preprocessing (PIL decode,
# Pillow's antialiased bilinear resize, centre crop, normalise) plus the PyTorch model;
# the preprocessed tensor compared value by value through image_prep_tool; 415, 413 and
# 400 for hostile uploads while the cluster keeps serving.
add_executable(image_prep_tool ${CMAKE_CURRENT_LIST_DIR}/image_prep_tool.c)
target_link_libraries(image_prep_tool PRIVATE corral_model)
corral_python_test(classify 300 "integration;router;replica;python")
