"""Owner commands, by mention: `@bot sync global` or `@bot sync guild`.

Commands are synced to SYNC_GUILD_IDS at start; syncing globally (which takes Discord up to an
hour to spread) happens only on purpose, here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from discord.ext import commands

if TYPE_CHECKING:
    from bot.client import AgentBot


class Admin(commands.Cog):
    def __init__(self, bot: AgentBot) -> None:
        self.bot = bot

    @commands.command(name="sync")
    @commands.is_owner()
    async def sync(self, ctx: commands.Context[AgentBot], scope: Literal["global", "guild"] = "guild") -> None:
        if scope == "global":
            synced = await self.bot.tree.sync()
            await ctx.reply(f"Synced {len(synced)} commands globally (Discord may take up to an hour).")
            return
        if ctx.guild is None:
            await ctx.reply("`sync guild` works in a server; use `sync global` here.")
            return
        self.bot.tree.copy_global_to(guild=ctx.guild)
        synced = await self.bot.tree.sync(guild=ctx.guild)
        await ctx.reply(f"Synced {len(synced)} commands to this server.")

    @sync.error
    async def sync_error(self, ctx: commands.Context[AgentBot], error: commands.CommandError) -> None:
        if isinstance(error, commands.NotOwner):
            await ctx.reply("Only the bot's owner may sync commands.")
        else:
            raise error


async def setup(bot: AgentBot) -> None:
    await bot.add_cog(Admin(bot))
