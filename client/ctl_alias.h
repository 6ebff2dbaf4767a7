/*
 * corralctl alias: a model's version aliases in a model repository on this machine
 * (models/<name>/aliases.json, common/aliases.h).
 *
 *     corralctl alias set --repo DIR MODEL ALIAS VERSION
 *     corralctl alias remove --repo DIR MODEL ALIAS
 *     corralctl alias list --repo DIR MODEL
 *
 * `set` refuses a VERSION that has no DIR/MODEL/VERSION/model.onnx. The file is
 * rewritten atomically; nothing that runs changes until the cluster config that
 * names the alias is applied again (corralctl apply).
 *
 * Usage: return ctl_alias(argc, argv) with argv[0] "alias"; the exit status is
 * corralctl's: 0 done, 1 refused (the message names the file or argument), 2 usage.
 */
#ifndef CORRAL_CLIENT_CTL_ALIAS_H
#define CORRAL_CLIENT_CTL_ALIAS_H

extern const char ctl_alias_synopsis[];

int ctl_alias(int argc, char **argv);

#endif
