/* A chat that remembers what you tell it about yourself, on engram.
 *
 *   gcc chat.c -I ffi/c/include -L target/release -lengram_c -o chat
 *   ./chat MODEL STORE
 *
 * Type a turn and press Enter. Statements about you ("My cat is called Miso.") are learned in
 * the background after the reply, while you type the next turn; one that changes an earlier
 * fact ("We moved to Coimbra.") replaces it. /remember TEXT learns TEXT whatever its form,
 * /forget WHAT forgets the fact WHAT names (its words or its number), /reset starts a new
 * conversation (what was learned stays), /quit or end of input ends. Input from a pipe waits
 * for each fact before the next turn, so a script gets the same answers on any machine. */
#define _POSIX_C_SOURCE 200809L /* isatty under -std=c11 */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "engram.h"

/* Runs on the learner's thread: the strings live only during the call. */
static void told(EngramMemoryEvent event, uint64_t number, const char *text, const char *detail,
                 void *user_data) {
    (void)user_data;
    if (event == ENGRAM_MEMORY_EVENT_REMEMBERED && detail)
        printf("  [learned #%llu: \"%s\" (replaces \"%s\")]\n", (unsigned long long)number, text, detail);
    else if (event == ENGRAM_MEMORY_EVENT_REMEMBERED)
        printf("  [learned #%llu: \"%s\"]\n", (unsigned long long)number, text);
    else if (event == ENGRAM_MEMORY_EVENT_FORGOT)
        printf("  [forgot #%llu: \"%s\"]\n", (unsigned long long)number, text);
    else
        printf("  [could not learn or forget \"%s\": %s]\n", text, detail ? detail : "");
    fflush(stdout);
}

static bool print_piece(const char *piece, void *user_data) {
    (void)user_data;
    fputs(piece, stdout);
    fflush(stdout);
    return true;
}

static int fail(const char *what) {
    fprintf(stderr, "chat: %s: %s\n", what, engram_last_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODEL STORE\n", argv[0]);
        return 2;
    }
    EngramEngine *engine = NULL;
    if (engram_open(argv[1], argv[2], true, 0, &engine) != ENGRAM_STATUS_OK)
        return fail("open");
    EngramChat *chat = NULL;
    if (engram_chat_new(engine, true, told, NULL, &chat) != ENGRAM_STATUS_OK) {
        engram_close(engine);
        return fail("chat");
    }
    /* Asked about yourself something you never told, it says so instead of inventing. */
    engram_chat_set_abstention(chat, "You haven't told me that.");
    bool scripted = !isatty(STDIN_FILENO);
    int status = 0;
    char line[4096];
    while (status == 0 && fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (line[0] == '\0')
            continue;
        if (strcmp(line, "/quit") == 0)
            break;
        EngramStatus s;
        if (strcmp(line, "/reset") == 0) {
            s = engram_chat_reset(chat);
            puts("(new conversation)");
        } else if (strncmp(line, "/remember ", 10) == 0) {
            s = engram_chat_remember(chat, line + 10);
        } else if (strncmp(line, "/forget ", 8) == 0) {
            s = engram_chat_forget(chat, line + 8);
        } else {
            printf("> %s\n", line);
            s = engram_chat_say(chat, line, 64, print_piece, NULL, NULL);
            putchar('\n');
        }
        if (s == ENGRAM_STATUS_OK && scripted)
            s = engram_chat_wait_idle(chat);
        if (s != ENGRAM_STATUS_OK)
            status = fail(line);
    }
    /* Frees the chat once what it queued is learned, before the store is closed. */
    if (engram_chat_free(chat) != ENGRAM_STATUS_OK && status == 0)
        status = fail("finish");
    engram_close(engine);
    return status;
}
