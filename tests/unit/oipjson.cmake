# The OIP JSON codec (oipjson/): JSON <-> tensor conversion, the JSON reader against
# jansson and strtod, and the shortest float printer. Linked without the router core.
if(TARGET PkgConfig::CMOCKA)
  foreach(t test_oip_convert test_jdoc test_jnum_format)
    add_executable(${t} ${CMAKE_CURRENT_LIST_DIR}/${t}.c)
    target_link_libraries(${t} PRIVATE corral_oipjson PkgConfig::CMOCKA PkgConfig::JANSSON)
    add_test(NAME router_${t} COMMAND ${t})
    set_tests_properties(router_${t} PROPERTIES LABELS "unit;router" TIMEOUT 60)
  endforeach()
else()
  message(STATUS "OIP codec tests skipped: cmocka not found")
endif()
