/*
 * The intrusive list of common/list.h. Every check walks the list both ways
 * and compares with an order kept by the test in a plain array, so a link
 * that insertion or removal forgets to update shows up as a wrong order, a
 * wrong count, or a walk that does not come back to the head.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "list.h"

struct item {
    int value;
    struct list_node link;
};

#define N_ITEMS 6
#define WALK_MAX 64 /* a walk longer than this has lost its way back to the head */

/* Asserts that `head` holds exactly want[0..n) in order, read forwards and backwards. */
static void expect_order(struct list_node *head, const int *want, size_t n)
{
    size_t i = 0;
    for (struct list_node *p = head->next; p != head; p = p->next) {
        assert_true(i < n && i < WALK_MAX);
        assert_ptr_equal(p->next->prev, p);
        assert_int_equal(list_entry(p, struct item, link)->value, want[i]);
        i++;
    }
    assert_int_equal(i, n);
    i = n;
    for (struct list_node *p = head->prev; p != head; p = p->prev) {
        assert_true(i > 0);
        i--;
        assert_ptr_equal(p->prev->next, p);
        assert_int_equal(list_entry(p, struct item, link)->value, want[i]);
    }
    assert_int_equal(i, 0);
    assert_int_equal(list_empty(head), n == 0);
}

/* Numbers it[0..n) 0, 1, ... on no list; with `head`, puts them on it in that order. */
static void make(struct item *it, size_t n, struct list_node *head)
{
    if (head)
        list_init(head);
    for (size_t i = 0; i < n; i++) {
        it[i].value = (int)i;
        list_node_init(&it[i].link);
        if (head)
            list_push_back(head, &it[i].link);
    }
}

static void test_empty(void **state)
{
    struct list_node head;
    list_init(&head);
    assert_true(list_empty(&head));
    assert_null(list_first_entry(&head, struct item, link));
    assert_null(list_last_entry(&head, struct item, link));
    struct item *pos;
    int visits = 0;
    list_for_each_entry(pos, &head, link) visits++;
    assert_int_equal(visits, 0);
}

static void test_push_order(void **state)
{
    struct item it[N_ITEMS];
    struct list_node head;
    make(it, N_ITEMS, NULL);
    list_init(&head);
    list_push_back(&head, &it[2].link);
    list_push_back(&head, &it[3].link);
    list_push_front(&head, &it[1].link);
    list_push_front(&head, &it[0].link);
    list_push_back(&head, &it[4].link);
    expect_order(&head, (const int[]){0, 1, 2, 3, 4}, 5);
    assert_int_equal(list_first_entry(&head, struct item, link)->value, 0);
    assert_int_equal(list_last_entry(&head, struct item, link)->value, 4);
    assert_true(list_linked(&it[0].link));
    assert_false(list_linked(&it[5].link));

    int seen[N_ITEMS], n = 0;
    struct item *pos;
    list_for_each_entry(pos, &head, link) seen[n++] = pos->value;
    assert_int_equal(n, 5);
    assert_memory_equal(seen, ((const int[]){0, 1, 2, 3, 4}), 5 * sizeof(int));
}

static void test_remove(void **state)
{
    struct item it[N_ITEMS];
    struct list_node head;
    make(it, N_ITEMS, &head);

    list_remove(&it[2].link); /* the middle */
    expect_order(&head, (const int[]){0, 1, 3, 4, 5}, 5);
    assert_false(list_linked(&it[2].link));
    list_remove(&it[0].link); /* the first */
    expect_order(&head, (const int[]){1, 3, 4, 5}, 4);
    list_remove(&it[5].link); /* the last */
    expect_order(&head, (const int[]){1, 3, 4}, 3);

    /* A node already off the list, or never on one, is left alone and leaves the list whole. */
    list_remove(&it[2].link);
    list_remove(&it[0].link);
    expect_order(&head, (const int[]){1, 3, 4}, 3);

    /* A removed node can go on again, here at the front. */
    list_push_front(&head, &it[5].link);
    expect_order(&head, (const int[]){5, 1, 3, 4}, 4);

    list_remove(&it[1].link);
    list_remove(&it[3].link);
    list_remove(&it[4].link);
    list_remove(&it[5].link);
    expect_order(&head, NULL, 0);
    for (int i = 0; i < N_ITEMS; i++)
        assert_false(list_linked(&it[i].link));
}

static void test_for_each_safe_removes(void **state)
{
    struct item it[N_ITEMS];
    struct list_node head;
    make(it, N_ITEMS, &head);
    struct item *pos, *tmp;
    int visits = 0;
    list_for_each_entry_safe(pos, tmp, &head, link) {
        visits++;
        if (pos->value % 2 == 0)
            list_remove(&pos->link);
    }
    assert_int_equal(visits, N_ITEMS);
    expect_order(&head, (const int[]){1, 3, 5}, 3);
    list_for_each_entry_safe(pos, tmp, &head, link) list_remove(&pos->link);
    expect_order(&head, NULL, 0);
}

static void test_take(void **state)
{
    struct item it[N_ITEMS];
    struct list_node from, to;
    make(it, N_ITEMS, NULL);
    list_init(&from);
    list_take(&to, &from); /* an empty list gives an empty list */
    expect_order(&to, NULL, 0);
    expect_order(&from, NULL, 0);

    for (int i = 0; i < 3; i++)
        list_push_back(&from, &it[i].link);
    list_take(&to, &from);
    expect_order(&to, (const int[]){0, 1, 2}, 3);
    expect_order(&from, NULL, 0);
    /* Both heads stay usable: new nodes join the emptied list, taken ones leave theirs. */
    list_push_back(&from, &it[3].link);
    list_remove(&it[1].link);
    expect_order(&to, (const int[]){0, 2}, 2);
    expect_order(&from, (const int[]){3}, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_push_order),
        cmocka_unit_test(test_remove),
        cmocka_unit_test(test_for_each_safe_removes),
        cmocka_unit_test(test_take),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
