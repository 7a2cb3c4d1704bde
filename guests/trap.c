/*
 * Exception reporting. case= on the command line picks one:
 *   ud          ud2 in ring 0 with #UD registered as expected: the handler prints the
 *               runtime's report line and passes if the reported RIP is the ud2's address.
 *   gp3         hlt in ring 3: #GP(0) with CPL 3 in the report (SDM Vol. 2A HLT: "#GP(0) if
 *               the current privilege level is not 0").
 *   unexpected  ud2 with no handler: the runtime's default report and
 *               "RESULT: FAIL trap exception" are the expected output.
 */
#include "runtime.h"

GUEST("trap");

extern char ud_site[], hlt_site[];

static void on_ud(struct frame *f)
{
    print_exception(f);
    int ok = f->rip == (u64)ud_site && (f->cs & 3) == 0;
    result(ok, "trap", "ud");
    shutdown();
}

static void on_gp(struct frame *f)
{
    print_exception(f);
    int ok = f->rip == (u64)hlt_site && (f->cs & 3) == 3 && f->error == 0;
    result(ok, "trap", "gp3");
    shutdown();
}

static __attribute__((noinline, noclone)) void do_ud2(void)
{
    __asm__ volatile(".globl ud_site\nud_site: ud2");
}

static u64 user_hlt(u64 arg)
{
    (void)arg;
    __asm__ volatile(".globl hlt_site\nhlt_site: hlt");
    return 0;
}

void guest_main(void)
{
    const char *c = cmdline_get("case");
    if (!c)
        c = "ud";
    printf("xenopus test guest: trap case=%s\n", c);
    if (!strcmp(c, "ud")) {
        expect_exception(6, on_ud);
        printf("expect RIP 0x%lx\n", (u64)ud_site);
        do_ud2();
    } else if (!strcmp(c, "gp3")) {
        expect_exception(13, on_gp);
        printf("expect RIP 0x%lx\n", (u64)hlt_site);
        run_user(user_hlt, 0, 0);
    } else if (!strcmp(c, "unexpected")) {
        printf("expect RIP 0x%lx\n", (u64)ud_site);
        do_ud2();
    } else {
        result(0, "trap", "unknown case %s", c);
        return;
    }
    result(0, "trap", "%s: no exception", c);
}
