/**
 * The balancer's version, as `--version` prints it and `lb_build_info`
 * reports it.
 *
 * @module
 */

/** This release of the balancer. */
export const VERSION = "0.9.0";
