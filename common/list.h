/*
 * list: an intrusive, circular, doubly-linked list.
 *
 * An object that goes on a list embeds a `struct list_node`; the list itself is
 * one more `struct list_node`, the head, that belongs to no object. A node
 * that is on no list points at itself, so removing it again (or removing a
 * node that was only initialised) does nothing, and insertion and removal are
 * O(1) with no allocation and no special case for the ends.
 *
 * Usage:
 *
 *     struct conn { int fd; struct list_node link; };
 *     struct server { struct list_node conns; };
 *
 *     list_init(&srv->conns);                       once, before any use
 *     list_node_init(&c->link);                     when c is made (calloc is not enough)
 *     list_push_back(&srv->conns, &c->link);        or list_push_front
 *     list_remove(&c->link);                        c is again on no list
 *     struct conn *c;
 *     list_for_each_entry(c, &srv->conns, link) { ... }
 *     struct conn *c, *tmp;
 *     list_for_each_entry_safe(c, tmp, &srv->conns, link)
 *         if (c->fd < 0) list_remove(&c->link);     the body may remove c
 *
 * list_first_entry reads the oldest of a list used as a queue (NULL when empty),
 * list_last_entry the newest;
 * list_take moves every node of one list onto an empty head, so a caller can end
 * a whole list's objects while new ones join the original.
 *
 * Ownership: the list owns nothing; an object must be removed before it is
 * freed. Thread safety: none; the owner of the head serialises access.
 */
#ifndef CORRAL_COMMON_LIST_H
#define CORRAL_COMMON_LIST_H

#include <stddef.h>

struct list_node {
    struct list_node *prev, *next;
};

/* Makes `head` an empty list. */
static inline void list_init(struct list_node *head)
{
    head->prev = head->next = head;
}

/* Marks `n` as on no list (the same as an empty list's head). */
static inline void list_node_init(struct list_node *n)
{
    n->prev = n->next = n;
}

static inline int list_empty(const struct list_node *head)
{
    return head->next == head;
}

/* True when `n` is on some list. */
static inline int list_linked(const struct list_node *n)
{
    return n->next != n;
}

/* Inserts `n` (on no list) between the adjacent nodes `prev` and `next`. */
static inline void list_insert_between(struct list_node *n, struct list_node *prev,
                                       struct list_node *next)
{
    n->prev = prev;
    n->next = next;
    prev->next = n;
    next->prev = n;
}

static inline void list_push_front(struct list_node *head, struct list_node *n)
{
    list_insert_between(n, head, head->next);
}

static inline void list_push_back(struct list_node *head, struct list_node *n)
{
    list_insert_between(n, head->prev, head);
}

/* Takes `n` off its list, leaving it on none; a node on no list is left as it is. */
static inline void list_remove(struct list_node *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}

/* Moves every node of `from` onto `to`, which must be empty; `from` is left empty. */
static inline void list_take(struct list_node *to, struct list_node *from)
{
    if (list_empty(from)) {
        list_init(to);
        return;
    }
    to->next = from->next;
    to->prev = from->prev;
    to->next->prev = to;
    to->prev->next = to;
    list_init(from);
}

/* The object of type `type` whose member `member` is the node `n`. */
#define list_entry(n, type, member) ((type *)(void *)((char *)(n) - offsetof(type, member)))

/* The first object on the list, or NULL when it is empty. */
#define list_first_entry(head, type, member)                                                   \
    (list_empty(head) ? (type *)NULL : list_entry((head)->next, type, member))

/* The last object on the list, or NULL when it is empty. */
#define list_last_entry(head, type, member)                                                    \
    (list_empty(head) ? (type *)NULL : list_entry((head)->prev, type, member))

/* Every object on the list, first to last; the body must not remove `pos`. */
#define list_for_each_entry(pos, head, member)                                                 \
    for (pos = list_entry((head)->next, __typeof__(*pos), member); &pos->member != (head);     \
         pos = list_entry(pos->member.next, __typeof__(*pos), member))

/* The same, where the body may remove `pos` (but no other object of the list). */
#define list_for_each_entry_safe(pos, tmp, head, member)                                       \
    for (pos = list_entry((head)->next, __typeof__(*pos), member),                             \
        tmp = list_entry(pos->member.next, __typeof__(*pos), member);                          \
         &pos->member != (head);                                                               \
         pos = tmp, tmp = list_entry(tmp->member.next, __typeof__(*pos), member))

#endif
